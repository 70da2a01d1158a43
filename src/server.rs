//! The server: binds listeners, accepts connections under connection limits,
//! spawns one task per connection, and shuts down cleanly.
//!
//! [`start_on`] takes already-bound listeners (tests bind `127.0.0.1:0`) and
//! returns a [`ServerHandle`] with the bound addresses and a shutdown switch,
//! so tests, the benchmark and the mesh tests run servers in-process.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::Config;
use crate::conn;
use crate::federation::Federation;
use crate::mesh::Mesh;
use crate::ops::Metrics;
use crate::password::Passwords;
use crate::proto::ErrorCode;
use crate::refusals::RefusalLog;
use crate::session;
use crate::store::Store;
use crate::tls;

/// Connections over a limit are still told why (after a handshake); at most
/// this many such refusals are in flight, beyond that they are just dropped.
const MAX_REFUSALS_IN_FLIGHT: usize = 64;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// TLS setup failed (the message names the file).
    #[error(transparent)]
    Tls(#[from] tls::Error),
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {cause}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        cause: std::io::Error,
    },
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    /// The mesh could not start.
    #[error(transparent)]
    Mesh(#[from] crate::mesh::Error),
    /// Federation could not start.
    #[error(transparent)]
    Federation(#[from] crate::federation::Error),
    /// The password hasher's parameters are unusable.
    #[error(transparent)]
    Password(#[from] crate::password::Error),
    /// The data directory could not be created.
    #[error("cannot create data directory {}: {cause}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What the OS said.
        cause: std::io::Error,
    },
}

/// State every connection task shares.
pub struct Shared {
    /// The configuration the server started with.
    pub config: Config,
    /// TLS with our certificate and ALPN list, its cipher order chosen
    /// per client.
    pub tls: tls::CipherChoice,
    /// What sessions need from the config (the mesh shares it).
    pub session_ctx: Arc<session::Context>,
    /// Cancelled when shutdown begins: stop accepting, say goodbye.
    pub shutdown: CancellationToken,
    /// Cancelled when the grace period is over: close whatever is left.
    pub hard_stop: CancellationToken,
    /// Which browser origins may open a WebSocket.
    pub web_origins: crate::web::origin::Policy,
    counts: Mutex<ConnCounts>,
    next_conn_id: AtomicU64,
    refusals: RefusalLog,
}

#[derive(Default)]
struct ConnCounts {
    total: usize,
    /// By [`crate::source::source_key`].
    per_ip: HashMap<IpAddr, usize>,
    refusals: usize,
}

/// Holds a connection's place in the counts; releases it on drop.
struct Admission {
    shared: Arc<Shared>,
    ip: IpAddr,
    refused: bool,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let Ok(mut c) = self.shared.counts.lock() else {
            return;
        };
        if self.refused {
            c.refusals = c.refusals.saturating_sub(1);
            return;
        }
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
    }
}

/// Admits a connection from `ip`, or says which limit it hit; `None` when
/// even the refusal would be over its own bound (drop the socket).
fn admit(shared: &Arc<Shared>, ip: IpAddr) -> Option<(Admission, Option<ErrorCode>)> {
    let ip = crate::source::source_key(ip);
    let limits = &shared.config.limits;
    let mut c = shared.counts.lock().ok()?;
    let per_ip = c.per_ip.get(&ip).copied().unwrap_or(0);
    let refusal = if c.total >= limits.max_connections {
        Some(ErrorCode::ServerFull)
    } else if per_ip >= limits.max_connections_per_ip {
        Some(ErrorCode::ServerPerIpLimit)
    } else {
        None
    };
    if refusal.is_some() {
        if c.refusals >= MAX_REFUSALS_IN_FLIGHT {
            return None;
        }
        c.refusals += 1;
    } else {
        c.total += 1;
        *c.per_ip.entry(ip).or_insert(0) += 1;
    }
    let admission = Admission {
        shared: shared.clone(),
        ip,
        refused: refusal.is_some(),
    };
    Some((admission, refusal))
}

/// A running server.
pub struct ServerHandle {
    addrs: Vec<SocketAddr>,
    ops_addr: Option<SocketAddr>,
    mesh: Option<Mesh>,
    federation: Option<Federation>,
    store: Store,
    fingerprint: [u8; 32],
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl ServerHandle {
    /// The first bound address.
    pub fn local_addr(&self) -> SocketAddr {
        // start_on refuses an empty listener list, so there is always one.
        self.addrs[0]
    }

    /// Every bound address, in config order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The operator's listener's address, when `ops.enabled`.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops_addr
    }

    /// SHA-256 of the server certificate.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// The store (benchmarks write to it directly).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The mesh, when `mesh.enabled`.
    pub fn mesh(&self) -> Option<&Mesh> {
        self.mesh.as_ref()
    }

    /// Federation, when `federation.enabled`.
    pub fn federation(&self) -> Option<&Federation> {
        self.federation.as_ref()
    }

    /// A token that begins shutdown when cancelled (for signal handlers).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the server has stopped.
    pub async fn wait(self) {
        let _ = self.task.await;
    }

    /// Begins shutdown and waits for it to finish.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.wait().await;
    }
}

/// Binds every `server.listen` address and starts the server.
pub async fn start(config: Config) -> Result<ServerHandle, Error> {
    let mut listeners = Vec::with_capacity(config.server.listen.len());
    for addr in &config.server.listen {
        let l = bind(*addr).map_err(|cause| Error::Bind { addr: *addr, cause })?;
        listeners.push(l);
    }
    start_on(config, listeners).await
}

/// Binds a listening socket. An IPv6 address listens for IPv6 only, so
/// `0.0.0.0:P` and `[::]:P` can both be listed without clashing.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // Restart without waiting out TIME_WAIT on the port.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Starts the server on already-bound listeners; the mesh listener, when
/// the mesh is enabled, is bound from `mesh.listen`.
pub async fn start_on(config: Config, listeners: Vec<TcpListener>) -> Result<ServerHandle, Error> {
    start_with_mesh(config, listeners, None).await
}

/// Starts the server on already-bound client listeners and, when the mesh
/// is enabled, on `mesh_listener` (bound from `mesh.listen` when `None`).
pub async fn start_with_mesh(
    config: Config,
    listeners: Vec<TcpListener>,
    mesh_listener: Option<TcpListener>,
) -> Result<ServerHandle, Error> {
    if listeners.is_empty() {
        return Err(Error::Bind {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            cause: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no listener given"),
        });
    }
    let data_dir = config.server.data_dir.clone();
    std::fs::create_dir_all(&data_dir).map_err(|cause| Error::DataDir {
        path: data_dir.clone(),
        cause,
    })?;
    let server_tls = tls::server_config(&config.tls, &config.server.name, config.web.enabled)?;
    let passwords = Passwords::new(config.auth.cost(), config.auth.concurrent_hashes())?;
    let metrics = Arc::new(Metrics::new());
    let observer = metrics.clone();
    let limits = config.history.message_log_limits();
    let store = Store::open_observed(&data_dir, &config.server.node, limits, move |took| {
        observer.commit(took)
    })?;
    let topics = store.call(|db| db.all_topics()).await?;
    if server_tls.generated {
        info!(cert = %config.tls.cert_file.display(), key = %config.tls.key_file.display(), "generated a self-signed certificate");
    }
    let mut addrs = Vec::with_capacity(listeners.len());
    for l in &listeners {
        let addr = l.local_addr().map_err(|cause| Error::Bind {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            cause,
        })?;
        addrs.push(addr);
    }
    let ops = match config.ops.enabled {
        true => {
            let addr = config.ops.listen;
            let l = bind(addr).map_err(|cause| Error::Bind { addr, cause })?;
            let bound = l
                .local_addr()
                .map_err(|cause| Error::Bind { addr, cause })?;
            Some((l, bound))
        }
        false => None,
    };
    let mut session_ctx = session::Context::new(&config, store.clone(), passwords, topics);
    session_ctx.metrics = metrics.clone();
    let session_ctx = Arc::new(session_ctx);
    let shutdown_token = CancellationToken::new();
    let mesh = if config.mesh.enabled {
        let listener = match mesh_listener {
            Some(l) => l,
            None => bind(config.mesh.listen).map_err(|cause| Error::Bind {
                addr: config.mesh.listen,
                cause,
            })?,
        };
        Some(
            Mesh::start(
                config.mesh.clone(),
                &config.server.name,
                &config.server.node,
                config.tls.self_signed,
                session_ctx.clone(),
                listener,
                Some(data_dir.join(crate::mesh::status::SOCKET)),
                shutdown_token.child_token(),
            )
            .await?,
        )
    } else {
        None
    };
    let federation = if config.federation.enabled {
        let addr = config.federation.listen;
        let listener = bind(addr).map_err(|cause| Error::Bind { addr, cause })?;
        Some(Federation::start(
            config.federation.clone(),
            &config.server.name,
            (&config.tls.cert_file, &config.tls.key_file),
            session_ctx.clone(),
            listener,
            shutdown_token.child_token(),
        )?)
    } else {
        None
    };
    let shared = Arc::new(Shared {
        session_ctx,
        tls: server_tls.config,
        refusals: RefusalLog::new(
            Duration::from_millis(config.log.refused_interval_ms),
            config.log.refused_max_addresses,
        ),
        web_origins: crate::web::origin::Policy::new(&config.web.allowed_origins),
        config,
        shutdown: shutdown_token,
        hard_stop: CancellationToken::new(),
        counts: Mutex::new(ConnCounts::default()),
        next_conn_id: AtomicU64::new(1),
    });
    let tracker = TaskTracker::new();
    for (listener, addr) in listeners.into_iter().zip(&addrs) {
        info!(%addr, server = %shared.config.server.name, node = %shared.config.server.node, "listening");
        tracker.spawn(accept_loop(shared.clone(), listener, tracker.clone()));
    }
    tracker.spawn(prune_loop(shared.clone()));
    tracker.spawn(join_request_loop(shared.clone()));
    tracker.spawn(presence_loop(shared.clone()));
    tracker.spawn(outside_changes_loop(shared.clone()));
    tracker.spawn(refusal_report_loop(shared.clone()));
    let ops_addr = ops.as_ref().map(|(_, a)| *a);
    // The operator's listener outlives the drain, which it reports:
    // `/healthz` answers 503 until the store is closed, then it stops.
    let ops_stop = CancellationToken::new();
    let ops_task = ops.map(|(listener, addr)| {
        info!(%addr, "operator's listener (metrics, health)");
        tokio::spawn(crate::ops::serve(
            listener,
            metrics.clone(),
            ops_stop.clone(),
        ))
    });
    // The store is open and every listener is bound.
    metrics.set_ready(true);
    tokio::spawn(tidy_store(store.clone(), shared.shutdown.clone()));
    let shutdown = shared.shutdown.clone();
    let mesh_task = mesh.clone();
    let federation_task = federation.clone();
    let store_handle = store.clone();
    let task = tokio::spawn(async move {
        shared.shutdown.cancelled().await;
        metrics.set_ready(false);
        info!("shutting down: no new connections, telling clients");
        tracker.close();
        let grace = shared.config.limits.shutdown_grace();
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            warn!(
                grace_ms = grace.as_millis() as u64,
                "grace period over; closing remaining connections"
            );
            shared.hard_stop.cancel();
            tracker.wait().await;
        }
        if let Some(m) = mesh_task {
            m.wait().await;
        }
        if let Some(f) = federation_task {
            f.wait().await;
        }
        store.close().await;
        ops_stop.cancel();
        if let Some(ops) = ops_task {
            let _ = ops.await;
        }
        info!("server stopped");
    });
    Ok(ServerHandle {
        addrs,
        ops_addr,
        mesh,
        federation,
        store: store_handle,
        fingerprint: server_tls.fingerprint,
        shutdown,
        task,
    })
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, tracker: TaskTracker) {
    let mut accepting = crate::accept::Accepting::new(&listener, &shared.shutdown, "client");
    while let Some((tcp, peer)) = accepting.next().await {
        let Some((admission, refusal)) = admit(&shared, peer.ip()) else {
            let report = shared
                .refusals
                .refused(peer.ip(), DROPPED, std::time::Instant::now());
            log_refusals(report);
            continue;
        };
        if let Some(code) = refusal {
            let report =
                shared
                    .refusals
                    .refused(peer.ip(), code.as_str(), std::time::Instant::now());
            log_refusals(report);
        }
        let id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let shared = shared.clone();
        tracker.spawn(async move {
            let _admission = admission;
            conn::run(shared, tcp, peer, id, refusal).await;
        });
    }
}

/// How often the store's tidying ticks: its page caches go back between
/// one and two ticks after the last work (a second was 1-2 s, and a burst's
/// memory was still held when chatbench read RSS 2 s after it).
const TIDY_EVERY: Duration = Duration::from_millis(250);

/// Ticks the store's tidying every [`TIDY_EVERY`] (see [`Store::tidy`])
/// until shutdown or the store's close.
async fn tidy_store(store: Store, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(TIDY_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !store.tidy() {
            return;
        }
    }
}

/// The reason logged for a connection dropped without a refusal: over a
/// limit, with too many refusals already in flight.
const DROPPED: &str = "dropped";

/// Logs refused connections, one line per address and interval.
fn log_refusals(reports: impl IntoIterator<Item = crate::refusals::Report>) {
    for r in reports {
        match r.ip {
            Some(ip) => warn!(
                %ip,
                count = r.count,
                reason = r.reason,
                "connections refused: over a connection limit"
            ),
            None => warn!(
                count = r.count,
                reason = r.reason,
                "connections refused: over a connection limit, from addresses not counted apart"
            ),
        }
    }
}

/// Logs the refusals counted but not yet logged, once per interval.
async fn refusal_report_loop(shared: Arc<Shared>) {
    let every = shared.refusals.interval();
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        log_refusals(shared.refusals.due(std::time::Instant::now()));
    }
    // What the last interval counted is still said.
    log_refusals(shared.refusals.due(std::time::Instant::now() + every));
}

/// Ends join requests when their time is up: sleeps until the earliest
/// deadline, or until a request is added (it may be earlier).
async fn join_request_loop(shared: Arc<Shared>) {
    let ctx = &shared.session_ctx;
    loop {
        let wait = match ctx.join_requests.next_expiry() {
            Some(at) => {
                let ms = at.saturating_sub(crate::proto::id::now_ms()).max(0);
                Duration::from_millis(u64::try_from(ms).unwrap_or(0))
            }
            None => Duration::from_secs(3600),
        };
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = ctx.join_requests.added() => {}
            _ = tokio::time::sleep(wait) => {}
        }
        session::expire_join_requests(ctx, crate::proto::id::now_ms());
    }
}

/// Acts on changes the admin CLI commits to the store beside the running
/// daemon (found at the store's tidy ticks): the sessions of an account it
/// deleted or disabled end, as they would for a change made here.
async fn outside_changes_loop(shared: Arc<Shared>) {
    let ctx = &shared.session_ctx;
    let mut outside = ctx.store.watch_external();
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            changed = outside.changed() => if changed.is_err() { return },
        }
        info!("the store was changed from outside the daemon (the admin CLI)");
        let here = ctx.presence.online.local_accounts();
        session::end_sessions_of_ended(ctx, here).await;
    }
}

/// How long presence changes are gathered before they are sent: a burst
/// of logins, or a node of the mesh falling silent, is one event per
/// watcher.
const PRESENCE_GATHER: Duration = Duration::from_millis(100);

/// Sends `presence` events when accounts come online or go offline.
async fn presence_loop(shared: Arc<Shared>) {
    let ctx = &shared.session_ctx;
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = ctx.presence.online.changed.notified() => {}
        }
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tokio::time::sleep(PRESENCE_GATHER) => {}
        }
        session::announce_presence(ctx).await;
    }
}

/// Applies history retention every `history.prune_interval_ms`, per topic,
/// with the topic's own overrides (`history_max_age_ms`, `history_max_messages`).
async fn prune_loop(shared: Arc<Shared>) {
    let h = shared.config.history.clone();
    let every = Duration::from_millis(h.prune_interval_ms);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let ctx = &shared.session_ctx;
        for t in ctx.topics.all() {
            let number = |key: &str, default: u64| {
                t.meta
                    .get(key)
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(default)
            };
            let age = i64::try_from(number("history_max_age_ms", h.max_age_ms)).unwrap_or(i64::MAX);
            let count = usize::try_from(number(
                "history_max_messages",
                h.max_messages_per_topic as u64,
            ))
            .unwrap_or(usize::MAX);
            let (id, now) = (t.id, crate::proto::id::now_ms());
            match ctx
                .store
                .call(move |db| db.prune_history(id, now, age, count))
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::debug!(topic = %t.name, removed = n, "history pruned"),
                Err(e) => warn!(topic = %t.name, error = %e, "history pruning failed"),
            }
        }
    }
}
