//! The configuration tree: every setting with its default, parsed from TOML.
//!
//! `Config::default()` and the embedded `default_config.toml` describe the same
//! values (a test holds them together). Unknown keys are rejected, so a typo in
//! a production config is an error that names the key, not a silent default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The embedded default configuration, printed by `tenthbitd config`.
pub const DEFAULT_TOML: &str = include_str!("default_config.toml");

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read config file {path}: {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        cause: std::io::Error,
    },
    /// The TOML did not parse or named an unknown key (the message names it).
    #[error("invalid config{}: {message}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Parse {
        /// The file, when there is one.
        path: Option<PathBuf>,
        /// toml's message, with line, column and key.
        message: String,
    },
    /// A value parsed but is out of range.
    #[error("invalid config value `{key}`: {reason}")]
    Invalid {
        /// Dotted key, e.g. `limits.max_line_bytes`.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Identity and addresses.
    pub server: ServerConfig,
    /// Certificate, key and ALPN.
    pub tls: TlsConfig,
    /// Login methods.
    pub auth: AuthConfig,
    /// Every limit, with its unit in its name.
    pub limits: Limits,
    /// Topic history.
    pub history: HistoryConfig,
    /// Logging.
    pub log: LogConfig,
    /// The web client and WebSocket sessions on the client port.
    pub web: WebConfig,
    /// The operator's listener (metrics, health).
    pub ops: OpsConfig,
    /// Links to the other nodes of this server.
    pub mesh: crate::mesh::config::MeshConfig,
    /// Ticket logins with other servers.
    pub federation: crate::federation::config::FederationConfig,
}

/// `[web]`: ALPN `http/1.1` on the client port (the page and WebSocket sessions).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    /// Offer `http/1.1` by ALPN.
    pub enabled: bool,
    /// Origins allowed besides same-origin and none at all (`https://chat.example.org`).
    pub allowed_origins: Vec<String>,
    /// Deadline for a request's headers, from when the connection waits for one.
    pub header_timeout_ms: u64,
    /// Largest WebSocket message read at all; beyond it the connection is closed.
    pub max_message_bytes: usize,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            allowed_origins: Vec::new(),
            header_timeout_ms: 10_000,
            max_message_bytes: 1024 * 1024,
        }
    }
}

impl WebConfig {
    /// Header deadline as a `Duration`.
    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms)
    }
}

/// `[ops]`: the operator's listener, never on the client port.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpsConfig {
    /// Serve `/metrics` and `/healthz`.
    pub enabled: bool,
    /// Where (plain HTTP: keep it on loopback or a private network).
    pub listen: SocketAddr,
}

impl Default for OpsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 10819)),
        }
    }
}

/// `[history]`: what topics remember. A topic's metadata may override it:
/// `history` (false: keep nothing), `history_max_age_ms`, `history_max_messages`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// Keep messages (each is committed before its `ack`).
    pub enabled: bool,
    /// Drop messages older than this.
    pub max_age_ms: u64,
    /// Keep at most this many messages per topic.
    pub max_messages_per_topic: usize,
    /// How often retention runs.
    pub prune_interval_ms: u64,
    /// Most messages in one `history` answer.
    pub max_page: usize,
    /// Unread messages counted per topic for read markers; a count this
    /// high means "at least".
    pub max_unread: usize,
    /// How long after sending a message its sender may edit it; 0: never.
    pub edit_window_ms: u64,
    /// Most edits of one message: each keeps its text in the log until the
    /// message leaves history.
    pub max_edits_per_message: u32,
    /// Most results in one `search` answer.
    pub max_search_page: usize,
    /// Most index matches one `search` page examines (bounds its time).
    pub search_scan: usize,
    /// Bytes of kept messages appended to the message log and not yet both
    /// synced and indexed; past it, senders are not read until the log
    /// catches up.
    pub pending_bytes: usize,
    /// How old the message log's current file may grow before the log
    /// starts another: files go once indexed, so this bounds how long a
    /// redacted or expired message's text stays in the log.
    pub log_roll_ms: u64,
    /// Bytes of the message log behind its end kept in the page cache
    /// once synced; older pages are dropped from it.
    pub log_cache_bytes: u64,
    /// Microseconds after a group's write began that the message log waits
    /// before it writes the next one, when more came in meanwhile; 0 never
    /// waits.
    pub log_group_wait_us: u64,
}

impl HistoryConfig {
    /// The message log's settings these give.
    pub fn message_log_limits(&self) -> crate::store::message_log::Limits {
        crate::store::message_log::Limits {
            pending_bytes: self.pending_bytes,
            roll_after: std::time::Duration::from_millis(self.log_roll_ms),
            cached_bytes: self.log_cache_bytes,
            group_wait: std::time::Duration::from_micros(self.log_group_wait_us),
            ..Default::default()
        }
    }
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_age_ms: 30 * 24 * 3600 * 1000,
            max_messages_per_topic: 100_000,
            prune_interval_ms: 60_000,
            max_page: 200,
            max_unread: 100,
            edit_window_ms: 3_600_000,
            max_edits_per_message: 100,
            max_search_page: 50,
            search_scan: 5000,
            pending_bytes: 32 << 20,
            log_roll_ms: 600_000,
            log_cache_bytes: 1 << 20,
            log_group_wait_us: crate::store::message_log::DEFAULT_GROUP_WAIT.as_micros() as u64,
        }
    }
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Server name users see (`10b.it`).
    pub name: String,
    /// Node name, unique within a mesh.
    pub node: String,
    /// Client listen addresses.
    pub listen: Vec<SocketAddr>,
    /// State directory.
    pub data_dir: PathBuf,
    /// Server rules, sent as server metadata after login.
    pub rules: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            name: "localhost".into(),
            node: "node1".into(),
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 10817))],
            data_dir: PathBuf::from("data"),
            rules: "Be excellent to each other.".into(),
        }
    }
}

/// `[tls]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
    /// Generate a self-signed pair when neither file exists.
    pub self_signed: bool,
    /// Offer `10bit-gzip/0.1`.
    pub gzip: bool,
    /// gzip level 0..=9.
    pub gzip_level: u32,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert_file: PathBuf::from("certs/tenthbitd.crt"),
            key_file: PathBuf::from("certs/tenthbitd.key"),
            self_signed: true,
            gzip: true,
            gzip_level: 6,
        }
    }
}

/// `[auth]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Methods announced in `welcome` and accepted by `auth`.
    pub methods: Vec<String>,
    /// Who may create accounts with the `register` op.
    pub registration: Registration,
    /// argon2id memory cost in KiB.
    pub argon2_memory_kib: u32,
    /// argon2id passes.
    pub argon2_iterations: u32,
    /// argon2id lanes.
    pub argon2_parallelism: u32,
    /// Password hashes computed at once; 0 means one less than the number of
    /// CPUs (at least 1), leaving a core for traffic.
    pub max_concurrent_hashes: usize,
    /// Lifetime of a login ticket.
    pub ticket_ttl_ms: u64,
    /// Lifetime of a public-key login challenge.
    pub challenge_ttl_ms: u64,
    /// Failed logins allowed per account within `failure_window_ms`.
    pub max_failures_per_account: u32,
    /// Failed logins allowed per source address within `failure_window_ms`.
    pub max_failures_per_ip: u32,
    /// The window over which failure allowances refill.
    pub failure_window_ms: u64,
}

/// Registration policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Registration {
    /// Anyone connected may register.
    Open,
    /// Only `tenthbitd account add` creates accounts.
    Closed,
    /// Only logged-in server admins may register accounts.
    Admins,
}

/// The login methods the protocol defines.
pub const AUTH_METHODS: [&str; 3] = ["password", "ticket", "pubkey"];

impl AuthConfig {
    /// The argon2 cost.
    pub fn cost(&self) -> crate::password::Cost {
        crate::password::Cost {
            memory_kib: self.argon2_memory_kib,
            iterations: self.argon2_iterations,
            parallelism: self.argon2_parallelism,
        }
    }

    /// How many hashes may run at once, with 0 resolved.
    pub fn concurrent_hashes(&self) -> usize {
        if self.max_concurrent_hashes > 0 {
            return self.max_concurrent_hashes;
        }
        std::thread::available_parallelism()
            .map(|n| n.get().saturating_sub(1))
            .unwrap_or(1)
            .max(1)
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            methods: AUTH_METHODS.iter().map(|m| (*m).to_owned()).collect(),
            registration: Registration::Open,
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            max_concurrent_hashes: 0,
            ticket_ttl_ms: 300_000,
            challenge_ttl_ms: 60_000,
            max_failures_per_account: 5,
            max_failures_per_ip: 20,
            failure_window_ms: 300_000,
        }
    }
}

/// `[limits]`: every bound the daemon enforces.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Longest line, excluding the newline, after decompression.
    pub max_line_bytes: usize,
    /// Deepest JSON nesting.
    pub max_json_depth: usize,
    /// Protocol errors in a row before the connection is closed.
    pub max_protocol_errors: u32,
    /// Outbound queue length per connection.
    pub max_sendq_packets: usize,
    /// Outbound queue size per connection, in bytes of encoded packets.
    pub max_sendq_bytes: usize,
    /// Packets a connection may send per second, sustained.
    pub packets_per_second: u32,
    /// Packets a connection may send at once before the rate applies.
    pub packet_burst: u32,
    /// Bytes of input that needs no reply (blank lines, `pong`) a
    /// connection may send per second, sustained.
    pub silent_bytes_per_second: u32,
    /// The same, at once, before the rate applies.
    pub silent_burst_bytes: u32,
    /// Topics one account may be a member of.
    pub max_topics_per_account: usize,
    /// Members one topic may have.
    pub max_members_per_topic: usize,
    /// How long a join request waits for an admitter before it expires.
    pub join_request_ttl_ms: u64,
    /// Join requests pending in one topic at once.
    pub max_join_requests_per_topic: usize,
    /// Join requests one account may have pending at once.
    pub max_join_requests_per_account: usize,
    /// Metadata keys per account (or topic).
    pub max_meta_keys: usize,
    /// Largest metadata value, as JSON bytes.
    pub max_meta_value_bytes: usize,
    /// Connections at once.
    pub max_connections: usize,
    /// Connections at once from one IP address.
    pub max_connections_per_ip: usize,
    /// TLS handshake deadline.
    pub handshake_timeout_ms: u64,
    /// Login deadline, from the end of the handshake.
    pub login_timeout_ms: u64,
    /// Silence before the server sends `ping`.
    pub keepalive_interval_ms: u64,
    /// Silence before the server hangs up.
    pub idle_timeout_ms: u64,
    /// Longest one socket write may take before the client is dropped.
    pub write_timeout_ms: u64,
    /// Drain deadline on shutdown.
    pub shutdown_grace_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_line_bytes: 64 * 1024,
            max_json_depth: 32,
            max_protocol_errors: 10,
            max_sendq_packets: 4096,
            max_sendq_bytes: 16 * 1024 * 1024,
            packets_per_second: 50,
            packet_burst: 200,
            silent_bytes_per_second: 1024,
            silent_burst_bytes: 64 * 1024,
            max_topics_per_account: 1000,
            max_members_per_topic: 10_000,
            join_request_ttl_ms: 600_000,
            max_join_requests_per_topic: 100,
            max_join_requests_per_account: 10,
            max_meta_keys: 64,
            max_meta_value_bytes: 4096,
            max_connections: 50_000,
            max_connections_per_ip: 64,
            handshake_timeout_ms: 10_000,
            login_timeout_ms: 30_000,
            keepalive_interval_ms: 60_000,
            idle_timeout_ms: 150_000,
            write_timeout_ms: 30_000,
            shutdown_grace_ms: 5_000,
        }
    }
}

impl Limits {
    /// Handshake deadline as a `Duration`.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
    /// Login deadline as a `Duration`.
    pub fn login_timeout(&self) -> Duration {
        Duration::from_millis(self.login_timeout_ms)
    }
    /// Keepalive interval as a `Duration`.
    pub fn keepalive_interval(&self) -> Duration {
        Duration::from_millis(self.keepalive_interval_ms)
    }
    /// Idle timeout as a `Duration`.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
    /// Write timeout as a `Duration`.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }
    /// Shutdown grace as a `Duration`.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// EnvFilter directives.
    pub level: String,
    /// Refused connections from one address log one warning per interval,
    /// with their count.
    pub refused_interval_ms: u64,
    /// Addresses whose refusals are counted apart; refusals from more are
    /// counted together.
    pub refused_max_addresses: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            refused_interval_ms: 10_000,
            refused_max_addresses: 1024,
        }
    }
}

impl Config {
    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Self, Error> {
        let config: Config = toml::from_str(text).map_err(|e| Error::Parse {
            path: None,
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a file.
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|cause| Error::Read {
            path: path.to_owned(),
            cause,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            Error::Parse { message, .. } => Error::Parse {
                path: Some(path.to_owned()),
                message,
            },
            other => other,
        })
    }

    /// The first enabled listener whose address overlaps an earlier one's
    /// (the same port, and the same address or either a wildcard), with
    /// the setting it overlaps: the daemon could not bind both, and would
    /// stop naming only the address. Port 0 (any free port) never clashes.
    fn clashing_listeners(&self) -> Option<(&'static str, &'static str, SocketAddr)> {
        let mut listeners: Vec<(&'static str, SocketAddr)> = self
            .server
            .listen
            .iter()
            .map(|a| ("server.listen", *a))
            .collect();
        for (key, enabled, addr) in [
            ("ops.listen", self.ops.enabled, self.ops.listen),
            ("mesh.listen", self.mesh.enabled, self.mesh.listen),
            (
                "federation.listen",
                self.federation.enabled,
                self.federation.listen,
            ),
        ] {
            if enabled {
                listeners.push((key, addr));
            }
        }
        let overlap = |a: SocketAddr, b: SocketAddr| {
            a.port() != 0
                && a.port() == b.port()
                && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
        };
        listeners.iter().enumerate().find_map(|(i, &(key, addr))| {
            listeners
                .iter()
                .take(i)
                .find(|&&(_, earlier)| overlap(addr, earlier))
                .map(|&(other, _)| (key, other, addr))
        })
    }

    /// Checks every value that parses but cannot work.
    pub fn validate(&self) -> Result<(), Error> {
        fn invalid(key: &'static str, reason: impl Into<String>) -> Error {
            Error::Invalid {
                key,
                reason: reason.into(),
            }
        }
        let s = &self.server;
        if !valid_server_name(&s.name) {
            return Err(invalid(
                "server.name",
                "must be a host name: letters, digits, '-' and '.', 1 to 253 characters",
            ));
        }
        if !valid_node_name(&s.node) {
            return Err(invalid(
                "server.node",
                "must be 1 to 64 letters, digits, '-' or '_'",
            ));
        }
        if s.listen.is_empty() {
            return Err(invalid("server.listen", "needs at least one address"));
        }
        if let Some((key, other, addr)) = self.clashing_listeners() {
            return Err(invalid(
                key,
                format!("{addr} overlaps {other}: two listeners cannot share a port"),
            ));
        }
        for (key, path) in [
            ("tls.cert_file", Some(&self.tls.cert_file)),
            ("tls.key_file", Some(&self.tls.key_file)),
            ("mesh.cert_file", Some(&self.mesh.cert_file)),
            ("mesh.key_file", Some(&self.mesh.key_file)),
            ("federation.cert_file", self.federation.cert_file.as_ref()),
            ("federation.key_file", self.federation.key_file.as_ref()),
        ] {
            if path.is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(invalid(key, "must name a file"));
            }
        }
        if self.tls.gzip_level > 9 {
            return Err(invalid("tls.gzip_level", "must be 0 to 9"));
        }
        if self.auth.methods.is_empty() {
            return Err(invalid("auth.methods", "needs at least one method"));
        }
        for m in &self.auth.methods {
            if !AUTH_METHODS.contains(&m.as_str()) {
                return Err(invalid(
                    "auth.methods",
                    format!("unknown method {m:?}; known: password, ticket, pubkey"),
                ));
            }
        }
        let a = &self.auth;
        if !(8..=4 * 1024 * 1024).contains(&a.argon2_memory_kib) {
            return Err(invalid("auth.argon2_memory_kib", "must be 8 to 4194304"));
        }
        if !(1..=64).contains(&a.argon2_iterations) {
            return Err(invalid("auth.argon2_iterations", "must be 1 to 64"));
        }
        if !(1..=16).contains(&a.argon2_parallelism) {
            return Err(invalid("auth.argon2_parallelism", "must be 1 to 16"));
        }
        if a.argon2_memory_kib < 8 * a.argon2_parallelism {
            return Err(invalid(
                "auth.argon2_memory_kib",
                "must be at least 8 × argon2_parallelism",
            ));
        }
        if a.max_concurrent_hashes > 1024 {
            return Err(invalid("auth.max_concurrent_hashes", "must be 0 to 1024"));
        }
        for (key, v) in [
            ("auth.ticket_ttl_ms", a.ticket_ttl_ms),
            ("auth.challenge_ttl_ms", a.challenge_ttl_ms),
            ("auth.failure_window_ms", a.failure_window_ms),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if a.max_failures_per_account == 0 || a.max_failures_per_ip == 0 {
            return Err(invalid(
                "auth.max_failures_per_account",
                "failure allowances must be at least 1",
            ));
        }
        if self.log.refused_interval_ms == 0 || self.log.refused_max_addresses == 0 {
            return Err(invalid(
                "log",
                "refused_interval_ms and refused_max_addresses must be at least 1",
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(invalid("log.level", e.to_string()));
        }
        let h = &self.history;
        if h.max_age_ms == 0 || h.prune_interval_ms == 0 || h.max_messages_per_topic == 0 {
            return Err(invalid(
                "history",
                "max_age_ms, max_messages_per_topic and prune_interval_ms must be at least 1",
            ));
        }
        if !(1..=1000).contains(&h.max_page) {
            return Err(invalid("history.max_page", "must be 1 to 1000"));
        }
        if !(1..=10_000).contains(&h.max_unread) {
            return Err(invalid("history.max_unread", "must be 1 to 10000"));
        }
        if !(1..=10_000).contains(&h.max_edits_per_message) {
            return Err(invalid(
                "history.max_edits_per_message",
                "must be 1 to 10000",
            ));
        }
        if !(1..=1000).contains(&h.max_search_page) {
            return Err(invalid("history.max_search_page", "must be 1 to 1000"));
        }
        if h.search_scan < h.max_search_page {
            return Err(invalid(
                "history.search_scan",
                "must be at least history.max_search_page",
            ));
        }
        if !(64 * 1024..=1 << 30).contains(&h.pending_bytes) {
            return Err(invalid(
                "history.pending_bytes",
                "must be 65536 to 1073741824",
            ));
        }
        if !(1000..=86_400_000).contains(&h.log_roll_ms) {
            return Err(invalid("history.log_roll_ms", "must be 1000 to 86400000"));
        }
        if h.log_cache_bytes > 1 << 40 {
            return Err(invalid(
                "history.log_cache_bytes",
                "must be 0 to 1099511627776",
            ));
        }
        // A kept message's ack waits for it at most: a tenth of a second.
        if h.log_group_wait_us > 100_000 {
            return Err(invalid("history.log_group_wait_us", "must be 0 to 100000"));
        }
        let l = &self.limits;
        if !(1024..=16 * 1024 * 1024).contains(&l.max_line_bytes) {
            return Err(invalid("limits.max_line_bytes", "must be 1024 to 16777216"));
        }
        // 127 at most: serde_json stops at 128 levels, so a deeper limit
        // would let through lines the decoder then calls malformed.
        if !(2..=crate::proto::packet::MAX_JSON_DEPTH).contains(&l.max_json_depth) {
            return Err(invalid("limits.max_json_depth", "must be 2 to 127"));
        }
        if l.max_protocol_errors == 0 {
            return Err(invalid("limits.max_protocol_errors", "must be at least 1"));
        }
        if l.max_sendq_packets < 16 {
            return Err(invalid("limits.max_sendq_packets", "must be at least 16"));
        }
        // Room for several of the largest packets and for a sender's burst
        // (a frame of up to 64 KiB plus a line, queued whole or not at all).
        if l.max_sendq_bytes < (4 * l.max_line_bytes).max(256 * 1024) {
            return Err(invalid(
                "limits.max_sendq_bytes",
                "must be at least 262144 and 4 × limits.max_line_bytes",
            ));
        }
        if l.packets_per_second == 0 || l.packet_burst == 0 {
            return Err(invalid(
                "limits.packets_per_second",
                "the packet rate and burst must be at least 1",
            ));
        }
        if l.silent_bytes_per_second == 0 || l.silent_burst_bytes < 1024 {
            return Err(invalid(
                "limits.silent_bytes_per_second",
                "the silent input rate must be at least 1 and its burst at least 1024",
            ));
        }
        if l.join_request_ttl_ms == 0
            || l.max_join_requests_per_topic == 0
            || l.max_join_requests_per_account == 0
        {
            return Err(invalid(
                "limits.join_request_ttl_ms",
                "the join request lifetime and bounds must be at least 1",
            ));
        }
        if l.max_topics_per_account == 0 || l.max_members_per_topic == 0 {
            return Err(invalid(
                "limits.max_topics_per_account",
                "topic and member limits must be at least 1",
            ));
        }
        if l.max_meta_keys == 0 {
            return Err(invalid("limits.max_meta_keys", "must be at least 1"));
        }
        if !(16..=l.max_line_bytes).contains(&l.max_meta_value_bytes) {
            return Err(invalid(
                "limits.max_meta_value_bytes",
                "must be 16 to limits.max_line_bytes",
            ));
        }
        if l.max_connections == 0 {
            return Err(invalid("limits.max_connections", "must be at least 1"));
        }
        if l.max_connections_per_ip == 0 {
            return Err(invalid(
                "limits.max_connections_per_ip",
                "must be at least 1",
            ));
        }
        for (key, v) in [
            ("limits.handshake_timeout_ms", l.handshake_timeout_ms),
            ("limits.login_timeout_ms", l.login_timeout_ms),
            ("limits.keepalive_interval_ms", l.keepalive_interval_ms),
            ("limits.idle_timeout_ms", l.idle_timeout_ms),
            ("limits.write_timeout_ms", l.write_timeout_ms),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if l.idle_timeout_ms <= l.keepalive_interval_ms {
            return Err(invalid(
                "limits.idle_timeout_ms",
                "must be longer than limits.keepalive_interval_ms",
            ));
        }
        let w = &self.web;
        if w.header_timeout_ms == 0 {
            return Err(invalid("web.header_timeout_ms", "must be at least 1"));
        }
        if !(l.max_line_bytes..=64 * 1024 * 1024).contains(&w.max_message_bytes) {
            return Err(invalid(
                "web.max_message_bytes",
                "must be limits.max_line_bytes to 67108864",
            ));
        }
        for origin in &w.allowed_origins {
            if crate::web::origin::Origin::parse(origin).is_none() {
                return Err(invalid(
                    "web.allowed_origins",
                    format!("{origin:?} is not scheme://host or scheme://host:port"),
                ));
            }
        }
        self.mesh.validate(&s.node)?;
        // An event carries a client's line and its wrapping (ids, sender,
        // clock): a peer refuses a longer packet, and the link would start
        // again at that same event every time.
        let room = l.max_line_bytes.saturating_add(MESH_PACKET_MARGIN);
        if self.mesh.enabled && self.mesh.max_packet_bytes < room {
            return Err(invalid(
                "mesh.max_packet_bytes",
                format!("must be at least limits.max_line_bytes + {MESH_PACKET_MARGIN} ({room})"),
            ));
        }
        self.federation.validate(&s.name)
    }
}

/// What a mesh packet may add to the client line it carries.
const MESH_PACKET_MARGIN: usize = 16 * 1024;

/// A node name: 1 to 64 letters, digits, '-' or '_'.
pub fn valid_node_name(node: &str) -> bool {
    !node.is_empty()
        && node.len() <= 64
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A DNS-style host name: labels of letters, digits and '-', joined by '.'.
pub fn valid_server_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_equal_default_impl() {
        let parsed = Config::from_toml(DEFAULT_TOML).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml("[limits]\nmax_lines_bytes = 5\n").unwrap_err();
        assert!(err.to_string().contains("max_lines_bytes"), "{err}");
    }

    #[test]
    fn out_of_range_value_is_named() {
        let err = Config::from_toml("[limits]\nmax_line_bytes = 5\n").unwrap_err();
        assert!(err.to_string().contains("limits.max_line_bytes"), "{err}");
        // serde_json stops at 128 levels: 127 is the deepest limit.
        let err = Config::from_toml("[limits]\nmax_json_depth = 128\n").unwrap_err();
        assert!(err.to_string().contains("must be 2 to 127"), "{err}");
        assert!(Config::from_toml("[limits]\nmax_json_depth = 127\n").is_ok());
        let err = Config::from_toml("[history]\nlog_roll_ms = 999\n").unwrap_err();
        assert!(err.to_string().contains("history.log_roll_ms"), "{err}");
        let c = Config::from_toml("[history]\nlog_roll_ms = 1000\n").expect("config");
        assert_eq!(
            c.history.message_log_limits().roll_after,
            std::time::Duration::from_secs(1)
        );
        let err = Config::from_toml("[history]\nlog_group_wait_us = 100001\n").unwrap_err();
        assert!(
            err.to_string().contains("history.log_group_wait_us"),
            "{err}"
        );
        let c = Config::from_toml("[history]\nlog_group_wait_us = 0\n").expect("config");
        assert_eq!(c.history.message_log_limits().group_wait, Duration::ZERO);
        let err = Config::from_toml("[history]\nlog_cache_bytes = 1099511627777\n").unwrap_err();
        assert!(err.to_string().contains("history.log_cache_bytes"), "{err}");
        let c = Config::from_toml("[history]\nlog_cache_bytes = 0\n").expect("config");
        assert_eq!(c.history.message_log_limits().cached_bytes, 0);
        assert_eq!(
            Config::default().history.message_log_limits().cached_bytes,
            crate::store::message_log::Limits::default().cached_bytes
        );
    }

    #[test]
    fn a_mesh_packet_has_room_for_a_client_line() {
        let err = Config::from_toml("[limits]\nmax_line_bytes = 1048576\n[mesh]\nenabled = true\n")
            .unwrap_err();
        assert!(err.to_string().contains("mesh.max_packet_bytes"), "{err}");
        assert!(Config::from_toml("[limits]\nmax_line_bytes = 1048576\n").is_ok());
        assert!(
            Config::from_toml(
                "[limits]\nmax_line_bytes = 1048576\n[mesh]\nenabled = true\nmax_packet_bytes = 1064960\n"
            )
            .is_ok()
        );
    }

    #[test]
    fn wrong_type_is_named() {
        let err = Config::from_toml("[server]\nlisten = \"nowhere\"\n").unwrap_err();
        assert!(err.to_string().contains("listen"), "{err}");
    }

    #[test]
    fn a_config_that_validates_can_start_the_hashers() {
        // toml's largest integer: past tokio's semaphore bound, whose
        // `Semaphore::new` panics when the daemon builds its hashers.
        let err =
            Config::from_toml("[auth]\nmax_concurrent_hashes = 9223372036854775807\n").unwrap_err();
        assert!(
            err.to_string().contains("auth.max_concurrent_hashes"),
            "{err}"
        );
        let err =
            Config::from_toml("[federation]\nmax_concurrent = 9223372036854775807\n").unwrap_err();
        assert!(
            err.to_string().contains("federation.max_concurrent"),
            "{err}"
        );
    }

    #[test]
    fn a_log_filter_the_daemon_cannot_use_is_named() {
        // `tenthbitd run` refuses it (`log.level: invalid filter directive`);
        // `check-config` must not call the same file ok.
        let err = Config::from_toml("[log]\nlevel = \"info,=bogus[\"\n").unwrap_err();
        assert!(err.to_string().contains("log.level"), "{err}");
    }

    #[test]
    fn a_peer_the_mesh_or_federation_cannot_name_in_tls_is_refused() {
        // `valid_node_name` and `valid_server_name` let these through, but
        // TLS cannot name them (all digits, a hex number, '-' at an end):
        // the daemon started, logged "not a usable TLS name" and never
        // dialled the peer, or never matched a CA-issued certificate to it.
        let fp = "AB:".repeat(31) + "AB";
        for node in ["2", "0x1f", "n2-", "-n2"] {
            let err = Config::from_toml(&format!(
                "[[mesh.peer]]\nnode = \"{node}\"\naddr = \"127.0.0.1:1\"\nfingerprint = \"{fp}\"\n"
            ))
            .unwrap_err();
            assert!(
                err.to_string().contains("mesh.peer") && err.to_string().contains("TLS"),
                "{node}: {err}"
            );
            let err = Config::from_toml(&format!(
                "[[mesh.peer]]\nnode = \"{node}\"\nca_file = \"ca.pem\"\n"
            ))
            .unwrap_err();
            assert!(err.to_string().contains("mesh.peer"), "{node}: {err}");
            // A pinned peer that only dials us is never named in TLS.
            assert!(
                Config::from_toml(&format!(
                    "[[mesh.peer]]\nnode = \"{node}\"\nfingerprint = \"{fp}\"\n"
                ))
                .is_ok()
            );
        }
        for name in ["chat.123", "0x1f", "a.b.0"] {
            let err = Config::from_toml(&format!(
                "[[federation.server]]\nname = \"{name}\"\naddr = \"127.0.0.1:1\"\nfingerprint = \"{fp}\"\n"
            ))
            .unwrap_err();
            assert!(
                err.to_string().contains("federation.server") && err.to_string().contains("TLS"),
                "{name}: {err}"
            );
        }
        // Names TLS takes still pass, IP addresses included.
        for (node, name) in [("n2", "first.example"), ("node_2", "192.0.2.7")] {
            assert!(
                Config::from_toml(&format!(
                    "[[mesh.peer]]\nnode = \"{node}\"\naddr = \"127.0.0.1:1\"\nfingerprint = \"{fp}\"\n[[federation.server]]\nname = \"{name}\"\naddr = \"127.0.0.1:1\"\nfingerprint = \"{fp}\"\n"
                ))
                .is_ok(),
                "{node} {name}"
            );
        }
    }

    #[test]
    fn listeners_that_would_share_a_port_are_refused() {
        for (toml, key) in [
            (
                "[server]\nlisten = [\"127.0.0.1:7000\", \"127.0.0.1:7000\"]\n",
                "server.listen",
            ),
            (
                "[server]\nlisten = [\"127.0.0.1:7000\"]\n[ops]\nenabled = true\nlisten = \"127.0.0.1:7000\"\n",
                "ops.listen",
            ),
            (
                "[server]\nlisten = [\"0.0.0.0:7000\"]\n[mesh]\nenabled = true\nlisten = \"127.0.0.1:7000\"\n",
                "mesh.listen",
            ),
            (
                "[server]\nlisten = [\"127.0.0.1:7000\"]\n[federation]\nenabled = true\nlisten = \"[::]:7000\"\n",
                "federation.listen",
            ),
        ] {
            let err = Config::from_toml(toml).unwrap_err().to_string();
            assert!(
                err.contains(key) && err.contains("overlaps"),
                "{toml}: {err}"
            );
        }
        for toml in [
            // Another port, a listener turned off, or any free port.
            "[server]\nlisten = [\"127.0.0.1:7000\", \"127.0.0.2:7000\", \"127.0.0.1:7001\"]\n",
            "[server]\nlisten = [\"127.0.0.1:7000\"]\n[ops]\nenabled = false\nlisten = \"127.0.0.1:7000\"\n",
            "[server]\nlisten = [\"127.0.0.1:0\"]\n[ops]\nenabled = true\nlisten = \"127.0.0.1:0\"\n",
        ] {
            assert!(Config::from_toml(toml).is_ok(), "{toml}");
        }
    }

    #[test]
    fn an_empty_file_name_is_named() {
        // check-config called these ok; the daemon then stopped with
        // "tenthbitd: : No such file or directory", naming nothing.
        for (toml, key) in [
            ("[tls]\ncert_file = \"\"\n", "tls.cert_file"),
            ("[tls]\nkey_file = \"\"\n", "tls.key_file"),
            ("[mesh]\ncert_file = \"\"\n", "mesh.cert_file"),
            ("[mesh]\nkey_file = \"\"\n", "mesh.key_file"),
            (
                "[federation]\ncert_file = \"\"\nkey_file = \"f.key\"\n",
                "federation.cert_file",
            ),
            (
                "[federation]\ncert_file = \"f.crt\"\nkey_file = \"\"\n",
                "federation.key_file",
            ),
        ] {
            let err = Config::from_toml(toml).unwrap_err();
            assert!(err.to_string().contains(key), "{toml}: {err}");
        }
    }

    #[test]
    fn server_names() {
        assert!(valid_server_name("10b.it"));
        assert!(valid_server_name("localhost"));
        assert!(!valid_server_name("a..b"));
        assert!(!valid_server_name("-a.b"));
        assert!(!valid_server_name("a b"));
    }
}
