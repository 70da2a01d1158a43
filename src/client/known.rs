//! Trust on first use, like ssh's known_hosts: the first connection to a
//! server remembers its certificate's SHA-256 fingerprint; later connections
//! accept only that certificate and refuse loudly if it changed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{Client, Error, Options};
use crate::tls::Trust;
use crate::tls::pin::{format_fingerprint, parse_fingerprint};

/// Whether the handshake failed because the pinned fingerprint did not
/// match (the error our fingerprint verifier gives), not for another reason.
fn refused_by_pin(e: &Error) -> bool {
    let Error::Io(io) = e else {
        return false;
    };
    io.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| {
            matches!(
                r,
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure
                )
            )
        })
}

/// The file of remembered servers: one `host:port FINGERPRINT` per line.
#[derive(Debug, Clone)]
pub struct KnownServers {
    path: PathBuf,
}

/// How a trust-on-first-use connection was trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trusted {
    /// The server presented the certificate remembered for it, this one.
    Known([u8; 32]),
    /// First contact: this fingerprint is now remembered.
    FirstUse([u8; 32]),
}

impl KnownServers {
    /// The file at `path` (created on first use).
    pub fn at(path: PathBuf) -> Self {
        Self { path }
    }

    /// `$TENTHBIT_KNOWN_SERVERS`, else `$XDG_CONFIG_HOME/tenthbit/known_servers`,
    /// else `~/.config/tenthbit/known_servers`.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("TENTHBIT_KNOWN_SERVERS") {
            return Some(PathBuf::from(p));
        }
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".config")))?;
        Some(base.join("tenthbit").join("known_servers"))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The fingerprint remembered for `target` (`host:port`): `None` when
    /// the file or the entry does not exist; an error when the file cannot
    /// be read or the entry does not parse, which is never taken for a first
    /// contact (that would turn pinning off for as long as the file stays
    /// damaged).
    pub fn lookup(&self, target: &str) -> Result<Option<[u8; 32]>, Error> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::Io(e)),
        };
        let text = String::from_utf8_lossy(&bytes);
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            if fields.next() == Some(target) {
                return fields
                    .next()
                    .and_then(parse_fingerprint)
                    .map(Some)
                    .ok_or_else(|| {
                        Error::Tls(crate::tls::Error::Trust(format!(
                            "the entry for {target} in {} does not parse",
                            self.path.display()
                        )))
                    });
            }
        }
        Ok(None)
    }

    /// Remembers `fingerprint` for `target`, replacing nothing: a changed
    /// certificate is the user's to accept, by editing the file.
    pub fn remember(&self, target: &str, fingerprint: &[u8; 32]) -> std::io::Result<()> {
        use std::io::Write;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        writeln!(f, "{target} {}", format_fingerprint(fingerprint))
    }

    /// Connects to `addr`, trusting the remembered certificate, or, on first
    /// contact, whatever the server presents (and remembering it).
    pub async fn connect(&self, addr: &str, opts: &Options) -> Result<(Client, Trusted), Error> {
        if let Some(known) = self.lookup(addr)? {
            let pinned = Options {
                trust: Trust::Fingerprint(known),
                ..opts.clone()
            };
            return match Client::connect(addr, &pinned).await {
                Ok(c) => Ok((c, Trusted::Known(known))),
                Err(e) if refused_by_pin(&e) => {
                    // Learn what it presents now, to say so; never trust it.
                    let seen = Arc::new(Mutex::new(None));
                    let probe = Options {
                        trust: Trust::FirstUse(seen.clone()),
                        ..opts.clone()
                    };
                    if let Ok(c) = Client::connect(addr, &probe).await {
                        c.close(std::time::Duration::from_secs(5)).await;
                    }
                    let now = seen.lock().ok().and_then(|s| *s);
                    Err(Error::CertificateChanged {
                        target: addr.to_owned(),
                        known: format_fingerprint(&known),
                        presented: now
                            .map(|f| format_fingerprint(&f))
                            .unwrap_or_else(|| "unknown".into()),
                        file: self.path.clone(),
                    })
                }
                Err(e) => Err(e),
            };
        }
        let seen = Arc::new(Mutex::new(None));
        let first = Options {
            trust: Trust::FirstUse(seen.clone()),
            ..opts.clone()
        };
        let client = Client::connect(addr, &first).await?;
        let fp =
            seen.lock().ok().and_then(|s| *s).ok_or_else(|| {
                Error::Tls(crate::tls::Error::Trust("no certificate seen".into()))
            })?;
        self.remember(addr, &fp)?;
        Ok((client, Trusted::FirstUse(fp)))
    }
}
