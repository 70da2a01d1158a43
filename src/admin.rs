//! Admin operations behind `tenthbitd account …` and `tenthbitd admin …`.
//! They open the store directly (SQLite's locking makes that safe while the
//! daemon runs) and record events like any other change.

use crate::config::Config;
use crate::password::Passwords;
use crate::proto::name::{PASSWORD_BYTES, check_username};
use crate::router::acl::{Flag, Subject};
use crate::store::{Account, Db};

/// Why an admin command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    /// Hashing failed.
    #[error(transparent)]
    Password(#[from] crate::password::Error),
    /// The name breaks the naming rules.
    #[error("invalid account name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// The password is too short or long.
    #[error("a password has {} to {} bytes", PASSWORD_BYTES.start(), PASSWORD_BYTES.end())]
    InvalidPassword,
    /// No account has that name.
    #[error("no account named {0:?}")]
    NoSuchAccount(String),
    /// Not a server flag.
    #[error("unknown server flag {0:?}; server flags are admin and create")]
    InvalidFlag(String),
    /// No store where the configuration points: a command other than
    /// `account add` never makes one (it would work on a store the daemon
    /// does not read).
    #[error(
        "no store at {}: is --config (or --data-dir) the daemon's? `account add` creates one",
        path.display()
    )]
    NoStore {
        /// The database file looked for.
        path: std::path::PathBuf,
    },
    /// The data directory cannot be created.
    #[error("cannot create data directory {}: {cause}", path.display())]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// What the OS said.
        cause: std::io::Error,
    },
}

/// Where `config`'s store is (or would be).
fn db_path(config: &Config) -> std::path::PathBuf {
    config.server.data_dir.join(crate::store::DB_FILE)
}

/// The store and hasher an admin command works with.
pub struct Admin {
    db: Db,
    passwords: Passwords,
}

impl Admin {
    /// Opens the store named by `config`, which must exist: an operator
    /// whose `--config` or `--data-dir` is not the daemon's gets an error,
    /// not an empty store that answers "no account named …".
    pub fn open(config: &Config) -> Result<Admin, Error> {
        let path = db_path(config);
        if !path.exists() {
            return Err(Error::NoStore { path });
        }
        Self::open_or_create(config)
    }

    /// Opens the store named by `config`, creating it (and its directory)
    /// if there is none yet; whether it did is the second half of the
    /// answer. For `account add`, which may come before the daemon's
    /// first start.
    pub fn create(config: &Config) -> Result<(Admin, bool), Error> {
        let created = !db_path(config).exists();
        Ok((Self::open_or_create(config)?, created))
    }

    fn open_or_create(config: &Config) -> Result<Admin, Error> {
        let dir = &config.server.data_dir;
        std::fs::create_dir_all(dir).map_err(|cause| Error::DataDir {
            path: dir.clone(),
            cause,
        })?;
        Ok(Admin {
            db: Db::open(dir, &config.server.node)?,
            passwords: Passwords::new(config.auth.cost(), 1)?,
        })
    }

    /// The store's version vector and state digest (as `mesh status` shows
    /// them), for when the daemon is not running.
    pub fn replica_state(&self) -> Result<(crate::store::VersionVector, String), Error> {
        Ok((self.db.version_vector()?, self.db.state_digest()?))
    }

    fn find(&self, name: &str) -> Result<Account, Error> {
        self.db
            .account_by_name(name)?
            .filter(|a| !a.deleted)
            .ok_or_else(|| Error::NoSuchAccount(name.to_owned()))
    }

    /// Creates an account.
    pub fn add(&mut self, name: &str, password: &str) -> Result<Account, Error> {
        check_username(name).map_err(|reason| Error::InvalidName {
            name: name.to_owned(),
            reason,
        })?;
        let phc = self.hash(password)?;
        Ok(self.db.create_account(name, &phc)?)
    }

    /// Sets an account's password; its unredeemed login tickets end with
    /// the old one.
    pub fn passwd(&mut self, name: &str, password: &str) -> Result<(), Error> {
        let account = self.find(name)?;
        let phc = self.hash(password)?;
        // Its tickets end as the change commits (`store::tickets`).
        Ok(self.db.set_password(account.id, &phc)?)
    }

    /// Deletes an account (its name stays reserved).
    pub fn delete(&mut self, name: &str) -> Result<(), Error> {
        let account = self.find(name)?;
        Ok(self.db.delete_account(account.id)?)
    }

    /// Every account, deleted ones included, with its server flags.
    pub fn list(&self) -> Result<Vec<(Account, Vec<Flag>)>, Error> {
        let acl = self.db.server_acl()?;
        let mut out = Vec::new();
        for a in self.db.list_accounts()? {
            let subject = Subject::Account(a.id);
            let flags = [Flag::Admin, Flag::Create]
                .into_iter()
                .filter(|f| acl.has_entry(&subject, *f))
                .collect();
            out.push((a, flags));
        }
        Ok(out)
    }

    /// Grants or revokes a server flag (`admin`, `create`) for an account
    /// name or `*`.
    pub fn set_server_flag(
        &mut self,
        subject: &str,
        flag: &str,
        granted: bool,
    ) -> Result<(), Error> {
        let flag = Flag::parse(flag)
            .filter(|f| matches!(f, Flag::Admin | Flag::Create))
            .ok_or_else(|| Error::InvalidFlag(flag.to_owned()))?;
        let subject = if subject == "*" {
            Subject::Everyone
        } else {
            Subject::Account(self.find(subject)?.id)
        };
        Ok(self.db.set_server_flag(&subject, flag, granted)?)
    }

    /// The server flags granted to `*`.
    pub fn everyone_flags(&self) -> Result<Vec<Flag>, Error> {
        let acl = self.db.server_acl()?;
        Ok([Flag::Admin, Flag::Create]
            .into_iter()
            .filter(|f| acl.has_entry(&Subject::Everyone, *f))
            .collect())
    }

    fn hash(&self, password: &str) -> Result<String, Error> {
        if !PASSWORD_BYTES.contains(&password.len()) {
            return Err(Error::InvalidPassword);
        }
        Ok(self.passwords.hash_blocking(password)?)
    }
}
