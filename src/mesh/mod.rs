//! The mesh: the nodes of one server linked over mutual TLS into any
//! connected graph, replicating the store's event log (DESIGN.md §8).
//!
//! Each link is a cursor over the log: after `mesh.hello` (which carries
//! the peer's version vector) the link's writer sends every event the peer
//! lacks, from SQLite, and then each new one as it is committed, local or
//! received from another link. Events from a peer go through the store's
//! one apply path; what they change outside the store (the topic table,
//! kept messages for members connected here) follows in [`effects`].
//! Packets for one node (ticket redemption) or for every node (join
//! requests, [`admission`]) are flooded with an id and dropped where seen
//! before ([`seen`]).
//!
//! Files, in a link's order: [`config`] (settings), `dial`/`accept` here,
//! [`link`] (hello, the two loops), [`wire`] (packets), [`effects`],
//! [`tickets`], [`admission`], [`status`].

mod admission;
pub mod config;
mod effects;
mod link;
mod messages;
pub mod presence;
mod relay;
pub mod seen;
pub mod status;
mod tickets;
pub mod wire;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::session::Context;
use crate::store::Store;
use crate::tls;
use crate::tls::mesh::{self as mtls, Peer, PeerCert};
use config::{MeshConfig, PeerTrust};
use link::Link;
use seen::Seen;

/// Why the mesh could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Certificates or trust settings are unusable.
    #[error("mesh: {0}")]
    Tls(tls::Error),
    /// The store could not be read.
    #[error("mesh: {0}")]
    Store(crate::store::Error),
}

// Not `#[from]`: that would make the inner error a source too, and
// `tenthbitd: {e:#}` would print its message twice.
impl From<tls::Error> for Error {
    fn from(e: tls::Error) -> Self {
        Error::Tls(e)
    }
}

impl From<crate::store::Error> for Error {
    fn from(e: crate::store::Error) -> Self {
        Error::Store(e)
    }
}

/// What a missing mesh certificate asks the operator to set.
pub const MISSING_CERT_FIX: &str =
    "set mesh.cert_file and mesh.key_file, or tls.self_signed = true";

/// Deliveries from the mesh exclude no connection (connection ids start at 1).
const NOBODY: u64 = 0;

/// Routed packets cross at most this many links.
const MAX_HOPS: u8 = 32;

/// A running mesh: a cheap handle.
#[derive(Clone)]
pub struct Mesh {
    inner: Arc<Inner>,
}

/// What every link and the dial and accept loops share.
struct Inner {
    cfg: MeshConfig,
    server: String,
    node: String,
    incarnation: String,
    ctx: Arc<Context>,
    store: Store,
    acceptor: TlsAcceptor,
    peers: Vec<Peer>,
    fingerprint: [u8; 32],
    addr: SocketAddr,
    /// The link in use to each node.
    links: Mutex<HashMap<String, Arc<Link>>>,
    /// Signalled whenever a link ends (dialers wait on it).
    link_gone: Notify,
    /// Nodes known to exist (configured, or seen as event origins): where
    /// a ticket's node code may point.
    known_nodes: Mutex<BTreeSet<String>>,
    seen: Mutex<Seen>,
    /// Ticket redemptions waiting for their issuer's answer.
    waiting: Mutex<HashMap<Uuid, oneshot::Sender<Option<Uuid>>>>,
    /// Per peer: the last reason a link to it failed, for `mesh status`.
    last_error: Mutex<HashMap<String, String>>,
    next_link: AtomicU64,
    routed_duplicates: AtomicU64,
    /// Relayed messages that came again by another path (the price of
    /// flooding), and those dropped (too old or new for the seen-cache, or
    /// a link's queue full).
    relay_duplicates: AtomicU64,
    relay_dropped: AtomicU64,
    /// This run's name as a relay origin (`node/boot`), and its relay
    /// counter (the lock also orders queueing).
    relay_origin: String,
    relay_seq: Mutex<u64>,
    /// This run of the node (a UUIDv7: later runs sort later).
    boot: String,
    /// Other nodes' connected accounts.
    presence: Mutex<presence::Table>,
    reorder: Mutex<relay::Reorder>,
    /// Held from a batch's commit until its effects are done, so kept
    /// messages that arrive on two links reach members in log order.
    applying: tokio::sync::Mutex<()>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Mesh {
    /// Starts the mesh on `listener`: accepts peers, dials every configured
    /// peer with an address, answers status queries on `status_socket`, and
    /// lends itself to the sessions for tickets.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        cfg: MeshConfig,
        server: &str,
        node: &str,
        self_signed: bool,
        ctx: Arc<Context>,
        listener: TcpListener,
        status_socket: Option<std::path::PathBuf>,
        shutdown: CancellationToken,
    ) -> Result<Mesh, Error> {
        let identity = tls::load_identity(&cfg.cert_file, &cfg.key_file, self_signed, node)
            .map_err(|e| e.missing_cert_fix(MISSING_CERT_FIX))?;
        if identity.generated {
            info!(cert = %cfg.cert_file.display(), "generated a self-signed mesh certificate");
        }
        let peers: Vec<Peer> = cfg
            .peers
            .iter()
            .filter_map(|p| {
                let cert = match p.trust()? {
                    PeerTrust::Fingerprint(fp) => PeerCert::Fingerprint(fp),
                    PeerTrust::Ca(path) => PeerCert::Ca(path),
                };
                Some(Peer {
                    node: p.node.clone(),
                    cert,
                })
            })
            .collect();
        let acceptor = TlsAcceptor::from(mtls::acceptor_config(&identity, &peers)?);
        let store = ctx.store.clone();
        let incarnation = store.call(|db| Ok(db.origin().incarnation.clone())).await?;
        let vv = store.call(|db| db.version_vector()).await?;
        let mut known: BTreeSet<String> = peers.iter().map(|p| p.node.clone()).collect();
        for origin in vv.0.keys() {
            if let Some((n, _)) = crate::store::replica::split_origin(origin) {
                known.insert(n.to_owned());
            }
        }
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let boot = Uuid::now_v7().simple().to_string();
        let inner = Arc::new(Inner {
            server: server.to_owned(),
            node: node.to_owned(),
            incarnation,
            ctx: ctx.clone(),
            store,
            acceptor,
            fingerprint: identity.fingerprint,
            addr,
            links: Mutex::new(HashMap::new()),
            link_gone: Notify::new(),
            known_nodes: Mutex::new(known),
            seen: Mutex::new(Seen::new(
                cfg.seen_ttl_ms,
                cfg.max_skew_ms,
                cfg.seen_capacity,
            )),
            waiting: Mutex::new(HashMap::new()),
            last_error: Mutex::new(HashMap::new()),
            next_link: AtomicU64::new(1),
            routed_duplicates: AtomicU64::new(0),
            relay_duplicates: AtomicU64::new(0),
            relay_dropped: AtomicU64::new(0),
            relay_origin: format!("{node}/{boot}"),
            relay_seq: Mutex::new(0),
            boot,
            presence: Mutex::new(presence::Table::default()),
            reorder: Mutex::new(relay::Reorder::default()),
            applying: tokio::sync::Mutex::new(()),
            shutdown,
            tracker: TaskTracker::new(),
            peers,
            cfg,
        });
        info!(
            %addr,
            node = %inner.node,
            fingerprint = %tls::pin::format_fingerprint(&inner.fingerprint),
            peers = inner.peers.len(),
            "mesh listening"
        );
        inner.tracker.spawn(accept_loop(inner.clone(), listener));
        inner.tracker.spawn(relay::flush_loop(inner.clone()));
        inner.tracker.spawn(presence::presence_loop(inner.clone()));
        if let Some(path) = status_socket {
            inner.tracker.spawn(status::serve(inner.clone(), path));
        }
        let identity = Arc::new(identity);
        for p in &inner.cfg.peers {
            let (Some(addr), Some(peer)) = (p.addr, inner.peers.iter().find(|x| x.node == p.node))
            else {
                continue;
            };
            let connector = TlsConnector::from(mtls::dialer_config(&identity, peer)?);
            inner
                .tracker
                .spawn(dial_loop(inner.clone(), peer.clone(), addr, connector));
        }
        let mesh = Mesh { inner };
        let relay: Arc<dyn crate::session::TicketRelay> = Arc::new(mesh.clone());
        let _ = ctx.ticket_relay.set(relay);
        let relay: Arc<dyn crate::session::EphemeralRelay> = Arc::new(mesh.clone());
        let _ = ctx.ephemeral_relay.set(relay);
        let relay: Arc<dyn crate::session::AdmissionRelay> = Arc::new(mesh.clone());
        let _ = ctx.admission_relay.set(relay);
        Ok(mesh)
    }

    /// The mesh listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// SHA-256 of this node's mesh certificate.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.inner.fingerprint
    }

    /// Waits until every link and loop has stopped (after shutdown began).
    pub async fn wait(&self) {
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }

    /// This node's view: version vector, state digest, links.
    pub async fn status(&self) -> Result<status::Status, crate::store::Error> {
        status::collect(&self.inner).await
    }
}

impl Inner {
    /// Installs a link that finished its hello, or refuses it. Of two links
    /// to one node, the one dialled by the node with the smaller name is
    /// kept (both ends decide alike); of two dialled the same way, the newer
    /// (the older is most likely half-open); a link silent for a keepalive
    /// interval gives way to any new one.
    fn register(&self, link: &Arc<Link>) -> bool {
        let Ok(mut links) = self.links.lock() else {
            return false;
        };
        if let Some(old) = links.get(&link.peer) {
            let replace = link.preferred == old.preferred
                || link.preferred
                || old.silent_for() > self.cfg.keepalive_interval();
            if !replace {
                return false;
            }
            info!(peer = %link.peer, old = old.id, new = link.id, "mesh: a newer link replaces the old one");
            old.end(
                wire::Code::Duplicate,
                "another link to this node is kept instead",
            );
        }
        links.insert(link.peer.clone(), link.clone());
        true
    }

    /// Forgets a link that ended.
    fn unregister(&self, link: &Link) {
        if let Ok(mut links) = self.links.lock() {
            if links.get(&link.peer).is_some_and(|l| l.id == link.id) {
                links.remove(&link.peer);
            }
        }
        self.link_gone.notify_waiters();
    }

    fn linked(&self, node: &str) -> bool {
        self.links
            .lock()
            .map(|l| l.contains_key(node))
            .unwrap_or(false)
    }

    fn all_links(&self) -> Vec<Arc<Link>> {
        self.links
            .lock()
            .map(|l| l.values().cloned().collect())
            .unwrap_or_default()
    }

    fn note_error(&self, peer: &str, why: String) {
        if let Ok(mut e) = self.last_error.lock() {
            e.insert(peer.to_owned(), why);
        }
    }

    fn learn_node(&self, node: &str) {
        if let Ok(mut k) = self.known_nodes.lock() {
            if !k.contains(node) {
                k.insert(node.to_owned());
            }
        }
    }

    /// Floods a routed packet to every link but `came_by`, unless seen.
    fn forward(&self, mut r: wire::Routed, came_by: Option<u64>) {
        if r.hops >= MAX_HOPS {
            return;
        }
        r.hops += 1;
        for l in self.all_links() {
            if Some(l.id) != came_by {
                l.send(wire::Packet::Route(r.clone()));
            }
        }
    }

    /// Sends a packet of our own to `to`.
    fn route(&self, to: &str, body: wire::RouteBody) {
        let r = wire::Routed {
            id: Uuid::now_v7(),
            from: self.node.clone(),
            to: to.to_owned(),
            hops: 0,
            body,
        };
        if let Ok(mut s) = self.seen.lock() {
            s.check(r.id, now_ms());
        }
        self.forward(r, None);
    }

    /// A routed packet arrived over link `came_by`.
    fn on_routed(self: &Arc<Self>, r: wire::Routed, came_by: u64) {
        let fresh = self
            .seen
            .lock()
            .map(|mut s| s.check(r.id, now_ms()))
            .unwrap_or(seen::Verdict::Duplicate);
        if fresh != seen::Verdict::Fresh {
            self.routed_duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if r.to == wire::BROADCAST {
            admission::on_broadcast(self, r, came_by);
            return;
        }
        if r.to != self.node {
            self.forward(r, Some(came_by));
            return;
        }
        tickets::on_routed(self, r);
    }
}

fn now_ms() -> u64 {
    u64::try_from(crate::proto::id::now_ms()).unwrap_or(0)
}

/// Accepts peers' links until shutdown.
async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    let mut accepting = crate::accept::Accepting::new(&listener, &inner.shutdown, "mesh");
    while let Some((tcp, addr)) = accepting.next().await {
        let inner2 = inner.clone();
        inner.tracker.spawn(async move {
            let _ = tcp.set_nodelay(true);
            let deadline = inner2.cfg.handshake_timeout();
            let shutdown = inner2.shutdown.clone();
            // A link still in its handshake does not hold shutdown up.
            let accepted = tokio::select! {
                a = mtls::accept_peer(&inner2.acceptor, tcp, deadline, &inner2.peers) => a,
                () = shutdown.cancelled() => return,
            };
            let (tls, peer) = match accepted {
                Ok((tls, peer)) => (tls, peer.node),
                Err(mtls::Refused::Timeout) => {
                    debug!(%addr, "mesh: TLS handshake timed out");
                    return;
                }
                Err(e) => {
                    warn!(%addr, code = %wire::Code::BadCertificate, error = %e, "mesh: refused a link at TLS");
                    return;
                }
            };
            link::run(inner2, tokio_rustls::TlsStream::Server(tls), peer, false).await;
        });
    }
}

/// Keeps a link to `peer` up: dials while there is none, with backoff.
async fn dial_loop(inner: Arc<Inner>, peer: Peer, addr: SocketAddr, connector: TlsConnector) {
    let min = Duration::from_millis(inner.cfg.redial_min_ms);
    let max = Duration::from_millis(inner.cfg.redial_max_ms);
    let mut backoff = min;
    let Ok(name) = mtls::dial_name(&peer) else {
        warn!(peer = %peer.node, "mesh: node name is not usable as a TLS name; not dialling");
        return;
    };
    loop {
        if inner.shutdown.is_cancelled() {
            return;
        }
        if inner.linked(&peer.node) {
            // Wait for the link to end (checked again now and then: a
            // notification may fall between the check and the wait).
            tokio::select! {
                _ = inner.shutdown.cancelled() => return,
                _ = inner.link_gone.notified() => {}
                _ = tokio::time::sleep(inner.cfg.keepalive_interval()) => {}
            }
            continue;
        }
        let dial = async {
            let tcp = TcpStream::connect(addr).await?;
            let _ = tcp.set_nodelay(true);
            connector.connect(name.clone(), tcp).await
        };
        let started = Instant::now();
        match tokio::time::timeout(inner.cfg.handshake_timeout(), dial).await {
            Ok(Ok(tls)) => {
                link::run(
                    inner.clone(),
                    tokio_rustls::TlsStream::Client(tls),
                    peer.node.clone(),
                    true,
                )
                .await;
                if started.elapsed() > max {
                    backoff = min;
                }
            }
            Ok(Err(e)) => {
                let why = format!("dial {addr}: {e}");
                debug!(peer = %peer.node, error = %why, "mesh: dial failed");
                inner.note_error(&peer.node, why);
            }
            Err(_) => inner.note_error(&peer.node, format!("dial {addr}: timed out")),
        }
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(max);
    }
}
