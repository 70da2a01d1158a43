//! `[federation]` and `[[federation.server]]`: which other servers this one
//! redeems tickets with, in both directions. Parsed as part of
//! [`crate::Config`]; validated here so that `tenthbitd check-config` names
//! the bad entry.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{Error, valid_server_name};

/// `[federation]`. Off by default: no other server is asked or answered.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FederationConfig {
    /// Answer other servers' redemption requests on `listen`, and redeem
    /// their tickets for our clients.
    pub enabled: bool,
    /// The federation listener (mutual TLS 1.3, ALPN `10bit-fed/0.1`).
    pub listen: SocketAddr,
    /// The certificate this server presents to other servers, both when
    /// answering and when asking (PEM). Unset: the client port's
    /// certificate (`tls.cert_file`), whose fingerprint clients already see.
    pub cert_file: Option<PathBuf>,
    /// See `cert_file`; set both or neither.
    pub key_file: Option<PathBuf>,
    /// Whether `*` in an ACL (a topic's or the server's) includes users of
    /// other servers. When false only entries naming them (`name@server`,
    /// `@server`) grant them anything.
    pub star_includes_foreign: bool,
    /// Deadline for a whole redemption as the asking side (connect, TLS,
    /// request, answer), and for each read as the answering side.
    pub timeout_ms: u64,
    /// Redemptions per minute, per other server: asked of it (as the
    /// asking side) and answered for it (as the answering side).
    pub requests_per_minute: u32,
    /// Federated logins one client connection may attempt per minute.
    pub client_attempts_per_minute: u32,
    /// Redemption requests being answered at once (more wait at TCP).
    pub max_concurrent: usize,
    /// The servers this one federates with.
    #[serde(rename = "server")]
    pub servers: Vec<ServerEntry>,
}

/// `[[federation.server]]`: another server, by the operator's choice.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerEntry {
    /// Its `server.name`.
    pub name: String,
    /// Its federation listener. Without it this server only answers that
    /// server's requests and never asks it (its tickets are refused here).
    #[serde(default)]
    pub addr: Option<SocketAddr>,
    /// SHA-256 of the certificate it presents (`AB:CD:…`).
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// Or: a CA file its certificate must chain to, valid for `name`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl Default for FederationConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 10820)),
            cert_file: None,
            key_file: None,
            star_includes_foreign: true,
            timeout_ms: 3_000,
            requests_per_minute: 600,
            client_attempts_per_minute: 6,
            max_concurrent: 64,
            servers: Vec::new(),
        }
    }
}

impl FederationConfig {
    /// `timeout_ms` as a Duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The entry for `name` (case-insensitive), if configured.
    pub fn server(&self, name: &str) -> Option<&ServerEntry> {
        self.servers
            .iter()
            .find(|s| s.name.eq_ignore_ascii_case(name))
    }

    /// Checks the section; `own` is this server's name.
    pub fn validate(&self, own: &str) -> Result<(), Error> {
        fn invalid(key: &'static str, reason: impl Into<String>) -> Error {
            Error::Invalid {
                key,
                reason: reason.into(),
            }
        }
        for (key, v) in [
            ("federation.timeout_ms", self.timeout_ms),
            (
                "federation.requests_per_minute",
                u64::from(self.requests_per_minute),
            ),
            (
                "federation.client_attempts_per_minute",
                u64::from(self.client_attempts_per_minute),
            ),
            ("federation.max_concurrent", self.max_concurrent as u64),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if self.max_concurrent > 4096 {
            return Err(invalid("federation.max_concurrent", "must be 1 to 4096"));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(invalid(
                "federation.cert_file",
                "set federation.cert_file and federation.key_file together, or neither",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, s) in self.servers.iter().enumerate() {
            let bad = |reason: &str| {
                invalid(
                    "federation.server",
                    format!("entry {} ({:?}): {reason}", i + 1, s.name),
                )
            };
            if !valid_server_name(&s.name) {
                return Err(bad("name must be a server name (a host name)"));
            }
            if (s.addr.is_some() || s.ca_file.is_some()) && !crate::mesh::config::tls_name(&s.name)
            {
                return Err(bad(
                    "name must be usable as a TLS name to be asked or checked against a CA \
                     (its last label not all digits or a hex number)",
                ));
            }
            if s.name.eq_ignore_ascii_case(own) {
                return Err(bad("names this server itself (server.name)"));
            }
            if !seen.insert(s.name.to_lowercase()) {
                return Err(bad("names a server listed twice"));
            }
            crate::mesh::config::check_trust(s.fingerprint.as_deref(), s.ca_file.as_deref())
                .map_err(bad)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    fn check(toml: &str) -> String {
        Config::from_toml(toml)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn a_bad_server_entry_is_named() {
        let fp = "AB:".repeat(31) + "AB";
        assert_eq!(
            check(&format!(
                "[federation]\nenabled = true\n[[federation.server]]\nname = \"first.example\"\naddr = \"127.0.0.1:1\"\nfingerprint = \"{fp}\"\n"
            )),
            ""
        );
        let err = check("[[federation.server]]\nname = \"a.example\"\nfingerprint = \"zz\"\n");
        assert!(
            err.contains("federation.server") && err.contains("entry 1"),
            "{err}"
        );
        let err = check(&format!(
            "[[federation.server]]\nname = \"LOCALHOST\"\nfingerprint = \"{fp}\"\n"
        ));
        assert!(err.contains("names this server itself"), "{err}");
        let err = check("[[federation.server]]\nname = \"a.example\"\n");
        assert!(err.contains("needs fingerprint or ca_file"), "{err}");
        let err = check(&format!(
            "[[federation.server]]\nname = \"a.example\"\nfingerprint = \"{fp}\"\n[[federation.server]]\nname = \"A.example\"\nfingerprint = \"{fp}\"\n"
        ));
        assert!(err.contains("entry 2") && err.contains("twice"), "{err}");
        let err = check("[[federation.server]]\nname = \"not a name\"\nfingerprint = \"x\"\n");
        assert!(err.contains("server name"), "{err}");
        let err = check("[federation]\ncert_file = \"x.crt\"\n");
        assert!(err.contains("federation.cert_file"), "{err}");
        let err = check("[federation]\ntimeout_ms = 0\n");
        assert!(err.contains("federation.timeout_ms"), "{err}");
    }
}
