//! `[mesh]` and `[[mesh.peer]]`: how this node links to the other nodes of
//! its server. Parsed as part of [`crate::Config`]; validated here so that
//! `tenthbitd check-config` names the bad entry.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::Error;
use crate::tls::pin::parse_fingerprint;

/// `[mesh]`. Off by default: a node with no peers is a mesh of one.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MeshConfig {
    /// Accept and dial mesh links.
    pub enabled: bool,
    /// The mesh listener (mutual TLS, ALPN `10bit-mesh/0.1`).
    pub listen: SocketAddr,
    /// This node's mesh certificate and key (PEM); generated like the
    /// client one when both are absent and `tls.self_signed` is on.
    pub cert_file: PathBuf,
    /// See `cert_file`.
    pub key_file: PathBuf,
    /// Largest clock difference accepted from a peer at hello.
    pub max_skew_ms: u64,
    /// A link sends `mesh.ack` this often (and so is never silent longer).
    pub keepalive_interval_ms: u64,
    /// A link silent this long is dropped and redialled.
    pub idle_timeout_ms: u64,
    /// Dial and hello must finish within this.
    pub handshake_timeout_ms: u64,
    /// First and longest wait between failed dials (doubling in between).
    pub redial_min_ms: u64,
    /// See `redial_min_ms`.
    pub redial_max_ms: u64,
    /// Largest mesh packet (one line of JSON), in bytes.
    pub max_packet_bytes: usize,
    /// Events read from the log per step of a link's cursor.
    pub batch_events: usize,
    /// How long a ticket forwarded to its issuing node may take.
    pub ticket_timeout_ms: u64,
    /// How long the ids of flooded messages are remembered: a message
    /// delayed longer on some path is dropped there (counted), never
    /// delivered twice.
    pub seen_ttl_ms: u64,
    /// Most ids remembered; under heavy traffic the window shrinks to what
    /// fits.
    pub seen_capacity: usize,
    /// How long a relayed message that arrives ahead of an earlier one of
    /// the same origin waits for it before the gap is given up.
    pub reorder_wait_ms: u64,
    /// How often this node tells the mesh who is connected to it (a
    /// heartbeat when nobody came or went).
    pub presence_interval_ms: u64,
    /// A node not heard from this long has its users shown offline (they
    /// stay members of their topics); heard again, they are online again.
    pub presence_timeout_ms: u64,
    /// How often the heartbeat is a full list rather than the changes (it
    /// repairs a view that missed a change).
    pub presence_full_interval_ms: u64,
    /// The nodes this node dials (and accepts).
    #[serde(rename = "peer")]
    pub peers: Vec<PeerConfig>,
}

/// `[[mesh.peer]]`: one node of this server to link with.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Its `server.node` name.
    pub node: String,
    /// Its mesh listener. Without it this node only accepts that peer.
    #[serde(default)]
    pub addr: Option<SocketAddr>,
    /// SHA-256 of its mesh certificate (`AB:CD:…`, as `mesh status` prints).
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// Or: a CA file its certificate must chain to, for a certificate that
    /// names the node (DNS name = node name).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 10818)),
            cert_file: "certs/mesh.crt".into(),
            key_file: "certs/mesh.key".into(),
            max_skew_ms: 5_000,
            keepalive_interval_ms: 2_000,
            idle_timeout_ms: 10_000,
            handshake_timeout_ms: 5_000,
            redial_min_ms: 100,
            redial_max_ms: 5_000,
            max_packet_bytes: 1024 * 1024,
            batch_events: 4096,
            ticket_timeout_ms: 3_000,
            seen_ttl_ms: 60_000,
            seen_capacity: 262_144,
            reorder_wait_ms: 1_000,
            presence_interval_ms: 1_000,
            presence_timeout_ms: 10_000,
            presence_full_interval_ms: 30_000,
            peers: Vec::new(),
        }
    }
}

/// A configured peer, checked: its trust is one of two kinds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerTrust {
    /// Exactly this certificate.
    Fingerprint([u8; 32]),
    /// A certificate for the node's name from this CA.
    Ca(PathBuf),
}

impl PeerConfig {
    /// How this peer's certificate is checked (validated config only).
    pub fn trust(&self) -> Option<PeerTrust> {
        match (&self.fingerprint, &self.ca_file) {
            (Some(fp), None) => parse_fingerprint(fp).map(PeerTrust::Fingerprint),
            (None, Some(ca)) => Some(PeerTrust::Ca(ca.clone())),
            _ => None,
        }
    }
}

impl MeshConfig {
    /// `keepalive_interval_ms` as a Duration.
    pub fn keepalive_interval(&self) -> Duration {
        Duration::from_millis(self.keepalive_interval_ms)
    }
    /// `idle_timeout_ms` as a Duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
    /// `handshake_timeout_ms` as a Duration.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
    /// `ticket_timeout_ms` as a Duration.
    pub fn ticket_timeout(&self) -> Duration {
        Duration::from_millis(self.ticket_timeout_ms)
    }

    /// Checks the section; `node` is this node's own name.
    pub fn validate(&self, node: &str) -> Result<(), Error> {
        fn invalid(key: &'static str, reason: impl Into<String>) -> Error {
            Error::Invalid {
                key,
                reason: reason.into(),
            }
        }
        for (key, v) in [
            ("mesh.max_skew_ms", self.max_skew_ms),
            ("mesh.keepalive_interval_ms", self.keepalive_interval_ms),
            ("mesh.handshake_timeout_ms", self.handshake_timeout_ms),
            ("mesh.redial_min_ms", self.redial_min_ms),
            ("mesh.ticket_timeout_ms", self.ticket_timeout_ms),
            ("mesh.seen_ttl_ms", self.seen_ttl_ms),
            ("mesh.reorder_wait_ms", self.reorder_wait_ms),
            ("mesh.presence_interval_ms", self.presence_interval_ms),
            (
                "mesh.presence_full_interval_ms",
                self.presence_full_interval_ms,
            ),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if self.presence_timeout_ms <= self.presence_interval_ms {
            return Err(invalid(
                "mesh.presence_timeout_ms",
                "must be longer than mesh.presence_interval_ms",
            ));
        }
        if self.idle_timeout_ms <= self.keepalive_interval_ms {
            return Err(invalid(
                "mesh.idle_timeout_ms",
                "must be longer than mesh.keepalive_interval_ms",
            ));
        }
        if self.redial_max_ms < self.redial_min_ms {
            return Err(invalid(
                "mesh.redial_max_ms",
                "must be at least mesh.redial_min_ms",
            ));
        }
        if !(64 * 1024..=64 * 1024 * 1024).contains(&self.max_packet_bytes) {
            return Err(invalid(
                "mesh.max_packet_bytes",
                "must be 65536 to 67108864",
            ));
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.seen_capacity) {
            return Err(invalid("mesh.seen_capacity", "must be 1024 to 16777216"));
        }
        if !(1..=10_000).contains(&self.batch_events) {
            return Err(invalid("mesh.batch_events", "must be 1 to 10000"));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, p) in self.peers.iter().enumerate() {
            let bad = |reason: String| {
                invalid(
                    "mesh.peer",
                    format!("entry {} ({:?}): {reason}", i + 1, p.node),
                )
            };
            if !crate::config::valid_node_name(&p.node) {
                return Err(bad(
                    "node must be 1 to 64 letters, digits, '-' or '_'".into()
                ));
            }
            if (p.addr.is_some() || p.ca_file.is_some()) && !tls_name(&p.node) {
                return Err(bad(
                    "node must be usable as a TLS name to be dialled or checked against a CA \
                     (not all digits or a hex number, no '-' at either end)"
                        .into(),
                ));
            }
            if p.node == node {
                return Err(bad("names this node itself (server.node)".into()));
            }
            if !seen.insert(p.node.clone()) {
                return Err(bad("names a node listed twice".into()));
            }
            check_trust(p.fingerprint.as_deref(), p.ca_file.as_deref())
                .map_err(|why| bad(why.into()))?;
        }
        Ok(())
    }
}

/// Whether TLS can name `name` (a DNS name or an IP address): a peer is
/// dialled by its name, and a CA-issued certificate must be valid for it.
pub fn tls_name(name: &str) -> bool {
    rustls::pki_types::ServerName::try_from(name).is_ok()
}

/// Checks how a peer's certificate is to be trusted: exactly one of a
/// pinned fingerprint or a CA file (mesh peers and federated servers).
pub fn check_trust(
    fingerprint: Option<&str>,
    ca_file: Option<&std::path::Path>,
) -> Result<(), &'static str> {
    match (fingerprint, ca_file) {
        (Some(fp), None) if parse_fingerprint(fp).is_none() => {
            Err("fingerprint must be 64 hex digits (colons allowed)")
        }
        (Some(_), Some(_)) => Err("give fingerprint or ca_file, not both"),
        (None, None) => Err("needs fingerprint or ca_file"),
        _ => Ok(()),
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
    fn a_bad_peer_entry_is_named() {
        let fp = "AB:".repeat(31) + "AB";
        assert_eq!(
            check(&format!(
                "[mesh]\nenabled = true\n[[mesh.peer]]\nnode = \"n2\"\naddr = \"127.0.0.1:1\"\nfingerprint = \"{fp}\"\n"
            )),
            ""
        );
        let err = check("[[mesh.peer]]\nnode = \"n2\"\nfingerprint = \"zz\"\n");
        assert!(
            err.contains("mesh.peer") && err.contains("entry 1") && err.contains("fingerprint"),
            "{err}"
        );
        let err = check(&format!(
            "[[mesh.peer]]\nnode = \"node1\"\nfingerprint = \"{fp}\"\n"
        ));
        assert!(err.contains("names this node itself"), "{err}");
        let err = check("[[mesh.peer]]\nnode = \"n2\"\n");
        assert!(err.contains("needs fingerprint or ca_file"), "{err}");
        let err = check(&format!(
            "[[mesh.peer]]\nnode = \"n2\"\nfingerprint = \"{fp}\"\n[[mesh.peer]]\nnode = \"n2\"\nfingerprint = \"{fp}\"\n"
        ));
        assert!(err.contains("entry 2") && err.contains("twice"), "{err}");
        let err = check("[[mesh.peer]]\nnode = \"n2\"\nfingerprnt = \"x\"\n");
        assert!(err.contains("fingerprnt"), "{err}");
        let err = check("[mesh]\nkeepalive_interval_ms = 5000\nidle_timeout_ms = 5000\n");
        assert!(err.contains("mesh.idle_timeout_ms"), "{err}");
    }
}
