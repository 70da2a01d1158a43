//! Login tickets: stored as SHA-256 hashes, consumed by any redemption
//! attempt, expiring. Tickets are not events: only the node that issued one
//! redeems it, so a partition cannot spend it twice.

use rusqlite::{OptionalExtension, params};
use uuid::Uuid;

use super::{Db, Error};

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

    /// Drops every ticket of an account (on deletion).
    pub fn drop_tickets(&mut self, account: Uuid) -> Result<(), Error> {
        self.conn.execute(
            "DELETE FROM tickets WHERE account = ?1",
            params![account.to_string()],
        )?;
        Ok(())
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
}
