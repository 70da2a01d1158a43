//! Federation (DESIGN.md §9): logging in on this server with a ticket that
//! another server (the account's home server) issued, so that no password
//! ever passes through a server that is not the account's.
//!
//! Two sides, one connection per redemption, mutual TLS 1.3 with ALPN
//! `10bit-fed/0.1` (the mesh's verifier, another trust relation: servers
//! of other operators, each listed by the operator under
//! `[[federation.server]]`):
//!
//! - [`ask`]: a client presents another server's ticket; this server dials
//!   that server's configured address (never one a client gave), relays
//!   the ticket and checks that the answer names an account of the server
//!   it called.
//! - [`answer`]: the federation listener; a configured server asks us to
//!   redeem one of our tickets bound to it; we redeem it once (at the node
//!   that issued it) and answer with the account's name.

mod answer;
mod ask;
pub mod config;
pub mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rustls::pki_types::ServerName;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::session::Context;
use crate::session::throttle::RateLimit;
use crate::tls;
use crate::tls::mesh::{self as mtls, Peer, PeerCert};
use config::FederationConfig;

/// Why federation could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Certificates or trust settings are unusable.
    #[error("federation: {0}")]
    Tls(tls::Error),
}

// Not `#[from]`: that would make the inner error a source too, and
// `tenthbitd: {e:#}` would print its message twice.
impl From<tls::Error> for Error {
    fn from(e: tls::Error) -> Self {
        Error::Tls(e)
    }
}

/// Running federation: a cheap handle.
#[derive(Clone)]
pub struct Federation {
    inner: Arc<Inner>,
}

/// What both sides share.
struct Inner {
    cfg: FederationConfig,
    /// This server's name.
    server: String,
    ctx: Arc<Context>,
    acceptor: TlsAcceptor,
    /// Every configured server, as TLS recognises it.
    peers: Vec<Peer>,
    /// Configured servers with an address, by lowercase name: whom we ask.
    homes: HashMap<String, Home>,
    /// Per configured server (lowercase name): redemptions asked of it.
    asked: Mutex<HashMap<String, RateLimit>>,
    /// Per configured server (lowercase name): redemptions answered for it.
    answered: Mutex<HashMap<String, RateLimit>>,
    /// Requests being answered at once.
    permits: Arc<Semaphore>,
    addr: SocketAddr,
    fingerprint: [u8; 32],
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

/// A server we may ask to redeem its tickets.
struct Home {
    /// Its name as configured.
    name: String,
    addr: SocketAddr,
    connector: TlsConnector,
    tls_name: ServerName<'static>,
}

impl Federation {
    /// Starts federation: answers configured servers on `listener`, and
    /// lends itself to the sessions for other servers' tickets. The
    /// certificate is `federation.cert_file` or else the client port's
    /// (`tls_cert`, `tls_key`).
    pub fn start(
        cfg: FederationConfig,
        server: &str,
        (tls_cert, tls_key): (&std::path::Path, &std::path::Path),
        ctx: Arc<Context>,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<Federation, Error> {
        let (cert, key) = match (&cfg.cert_file, &cfg.key_file) {
            (Some(c), Some(k)) => (c.as_path(), k.as_path()),
            _ => (tls_cert, tls_key),
        };
        let identity =
            tls::load_identity(cert, key, false, server).map_err(|e| match cfg.cert_file {
                Some(_) => e.missing_cert_fix(
                    "set federation.cert_file and federation.key_file to an existing pair, \
                 or unset both to use the client port's",
                ),
                None => e,
            })?;
        let mut peers = Vec::with_capacity(cfg.servers.len());
        for s in &cfg.servers {
            let cert = match (&s.fingerprint, &s.ca_file) {
                (Some(fp), None) => match tls::pin::parse_fingerprint(fp) {
                    Some(fp) => PeerCert::Fingerprint(fp),
                    None => continue,
                },
                (None, Some(ca)) => PeerCert::Ca(ca.clone()),
                _ => continue,
            };
            peers.push(Peer {
                node: s.name.clone(),
                cert,
            });
        }
        let acceptor = TlsAcceptor::from(mtls::acceptor_config_for(&identity, &peers, wire::ALPN)?);
        let mut homes = HashMap::new();
        for s in &cfg.servers {
            let (Some(addr), Some(peer)) = (s.addr, peers.iter().find(|p| p.node == s.name)) else {
                continue;
            };
            let connector =
                TlsConnector::from(mtls::dialer_config_for(&identity, peer, wire::ALPN)?);
            let Ok(tls_name) = mtls::dial_name(peer) else {
                warn!(server = %s.name, "federation: not a usable TLS name; never asked");
                continue;
            };
            homes.insert(
                s.name.to_lowercase(),
                Home {
                    name: s.name.clone(),
                    addr,
                    connector,
                    tls_name,
                },
            );
        }
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let inner = Arc::new(Inner {
            server: server.to_owned(),
            ctx: ctx.clone(),
            acceptor,
            peers,
            homes,
            asked: Mutex::new(HashMap::new()),
            answered: Mutex::new(HashMap::new()),
            permits: Arc::new(Semaphore::new(cfg.max_concurrent)),
            addr,
            fingerprint: identity.fingerprint,
            shutdown,
            tracker: TaskTracker::new(),
            cfg,
        });
        info!(
            %addr,
            fingerprint = %tls::pin::format_fingerprint(&inner.fingerprint),
            servers = inner.peers.len(),
            "federation listening"
        );
        inner
            .tracker
            .spawn(answer::accept_loop(inner.clone(), listener));
        let fed = Federation { inner };
        let abroad: Arc<dyn crate::session::Abroad> = Arc::new(fed.clone());
        let _ = ctx.abroad.set(abroad);
        Ok(fed)
    }

    /// The federation listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// SHA-256 of the certificate this server presents to other servers.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.inner.fingerprint
    }

    /// Waits until the listener and every exchange have stopped (after
    /// shutdown began).
    pub async fn wait(&self) {
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }
}

impl Inner {
    /// Takes a token from `server`'s bucket in `table`; `Err(wait)` when
    /// it is empty. Keys are configured servers only, so the table is
    /// bounded by the configuration.
    fn take(
        &self,
        table: &Mutex<HashMap<String, RateLimit>>,
        server: &str,
    ) -> Result<(), std::time::Duration> {
        let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
        t.entry(server.to_lowercase())
            .or_insert_with(|| RateLimit::per_minute(self.cfg.requests_per_minute))
            .take(std::time::Instant::now())
    }
}
