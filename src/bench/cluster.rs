//! Several nodes of one server on this machine, each mesh link through a
//! proxy that can cut, hold and restore it (DESIGN.md §8): shared by the
//! mesh tests and the mesh benchmark, so a topology or a partition is a
//! few lines. Everything listens on 127.0.0.1.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Config;
use crate::mesh::config::PeerConfig;
use crate::tls::pin::format_fingerprint;

/// What a proxy does with its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bytes flow.
    Open,
    /// Bytes wait (the link goes silent, both sockets stay open).
    Hold,
    /// Connections are closed and new ones refused.
    Cut,
}

/// A TCP proxy for one direction of one link.
pub struct Proxy {
    /// Where it listens.
    pub addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    mode: watch::Sender<Mode>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// A proxy to `target` on a fresh loopback port.
    pub async fn start(target: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let target = Arc::new(Mutex::new(target));
        let (mode, _) = watch::channel(Mode::Open);
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (t, m, c) = (target.clone(), mode.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                if *m.borrow() == Mode::Cut {
                    continue;
                }
                let Ok(to) = t.lock().map(|t| *t) else {
                    return;
                };
                let mode_rx = m.subscribe();
                let task = tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(to).await else {
                        return;
                    };
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    tokio::select! {
                        _ = pipe(ri, wo, mode_rx.clone()) => {}
                        _ = pipe(ro, wi, mode_rx) => {}
                    }
                });
                if let Ok(mut c) = c.lock() {
                    c.retain(|h| !h.is_finished());
                    c.push(task);
                }
            }
        });
        Ok(Proxy {
            addr,
            target,
            mode,
            conns,
            accept,
        })
    }

    /// Closes every connection and refuses new ones.
    pub fn cut(&self) {
        self.mode.send_replace(Mode::Cut);
        if let Ok(mut c) = self.conns.lock() {
            for h in c.drain(..) {
                h.abort();
            }
        }
    }

    /// Stops moving bytes; connections stay open.
    pub fn hold(&self) {
        self.mode.send_replace(Mode::Hold);
    }

    /// Moves bytes again and accepts new connections.
    pub fn restore(&self) {
        self.mode.send_replace(Mode::Open);
    }

    /// Sends new connections to `target` (a restarted node).
    pub fn retarget(&self, target: SocketAddr) {
        if let Ok(mut t) = self.target.lock() {
            *t = target;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        if let Ok(mut c) = self.conns.lock() {
            for h in c.drain(..) {
                h.abort();
            }
        }
    }
}

/// Copies bytes while the mode allows.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // Wait out a hold before reading, and again before writing.
        if mode.wait_for(|m| *m != Mode::Hold).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        match mode.wait_for(|m| *m != Mode::Hold).await {
            Ok(m) if *m == Mode::Cut => return,
            Ok(_) => {}
            Err(_) => return,
        }
        if to
            .write_all(buf.get(..n).unwrap_or_default())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// One node of a planned mesh: its name, directory, certificate and peers.
#[derive(Debug, Clone)]
pub struct NodePlan {
    /// `n0`, `n1`, …
    pub name: String,
    /// Holds its store and certificates.
    pub dir: PathBuf,
    /// SHA-256 of its mesh certificate.
    pub mesh_fingerprint: [u8; 32],
    /// Its mesh listener (a free port when planned).
    pub mesh_addr: SocketAddr,
    /// Its peers, each reached through a proxy.
    pub peers: Vec<PeerConfig>,
}

/// The server name every planned node serves.
pub const SERVER_NAME: &str = "mesh.test";

/// Plans `dirs.len()` nodes linked along `edges`: a mesh certificate per
/// node, a proxy per direction of each edge (`(from, to)`: the proxy
/// `from` dials `to` through).
pub async fn plan(
    dirs: &[PathBuf],
    edges: &[(usize, usize)],
) -> Result<(Vec<NodePlan>, HashMap<(usize, usize), Proxy>), crate::tls::Error> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |cause| crate::tls::Error::Io { path, cause }
    };
    let mut nodes = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let name = format!("n{i}");
        let (cert, key) = (dir.join("certs/mesh.crt"), dir.join("certs/mesh.key"));
        let id = crate::tls::load_identity(&cert, &key, true, &name)?;
        // A free port, bound again by the node when it starts.
        let probe = TcpListener::bind("127.0.0.1:0").await.map_err(io(dir))?;
        let mesh_addr = probe.local_addr().map_err(io(dir))?;
        nodes.push(NodePlan {
            name,
            dir: dir.clone(),
            mesh_fingerprint: id.fingerprint,
            mesh_addr,
            peers: Vec::new(),
        });
    }
    let mut proxies = HashMap::new();
    for &(a, b) in edges {
        for (from, to) in [(a, b), (b, a)] {
            let (Some(target), Some(fp), Some(node)) = (
                nodes.get(to).map(|n| n.mesh_addr),
                nodes.get(to).map(|n| n.mesh_fingerprint),
                nodes.get(to).map(|n| n.name.clone()),
            ) else {
                continue;
            };
            let proxy = Proxy::start(target).await.map_err(io(Path::new("proxy")))?;
            if let Some(n) = nodes.get_mut(from) {
                n.peers.push(PeerConfig {
                    node,
                    addr: Some(proxy.addr),
                    fingerprint: Some(format_fingerprint(&fp)),
                    ca_file: None,
                });
            }
            proxies.insert((from, to), proxy);
        }
    }
    Ok((nodes, proxies))
}

/// Makes `config` the configuration of the planned node (its directory,
/// certificates, name, peers), with timers short enough that links notice
/// silence within two seconds.
pub fn configure(node: &NodePlan, config: &mut Config) {
    config.server.name = SERVER_NAME.into();
    config.server.node = node.name.clone();
    config.server.data_dir = node.dir.join("data");
    config.tls.cert_file = node.dir.join("certs/server.crt");
    config.tls.key_file = node.dir.join("certs/server.key");
    config.auth.argon2_memory_kib = 64;
    config.auth.argon2_iterations = 1;
    let m = &mut config.mesh;
    m.enabled = true;
    m.cert_file = node.dir.join("certs/mesh.crt");
    m.key_file = node.dir.join("certs/mesh.key");
    m.peers = node.peers.clone();
    m.keepalive_interval_ms = 200;
    m.idle_timeout_ms = 1_500;
    m.redial_min_ms = 20;
    m.redial_max_ms = 300;
    m.handshake_timeout_ms = 3_000;
    m.ticket_timeout_ms = 1_500;
    // Loaded test machines can be slow: a gap waits long before it is
    // given up.
    m.reorder_wait_ms = 5_000;
    // Presence heartbeats often, so a silent node shows quickly; the
    // timeout leaves room for a loaded machine.
    m.presence_interval_ms = 100;
    m.presence_timeout_ms = 2_000;
}

/// Binds a planned node's mesh port again (or a fresh one if it was taken
/// meanwhile) and points the proxies to it.
pub async fn bind_mesh(
    node: &mut NodePlan,
    proxies: &HashMap<(usize, usize), Proxy>,
    index: usize,
) -> std::io::Result<TcpListener> {
    let listener = match TcpListener::bind(node.mesh_addr).await {
        Ok(l) => l,
        Err(_) => TcpListener::bind("127.0.0.1:0").await?,
    };
    node.mesh_addr = listener.local_addr()?;
    for ((_, to), p) in proxies {
        if *to == index {
            p.retarget(node.mesh_addr);
        }
    }
    Ok(listener)
}
