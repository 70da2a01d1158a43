//! Mesh test harness: several nodes of one server in this process, each
//! link through a proxy that can cut, hold and restore it (DESIGN.md §8),
//! so a topology or a partition is a few lines of test code.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tenthbit::mesh::config::PeerConfig;
use tenthbit::mesh::status::Status;
use tenthbit::tls::pin::format_fingerprint;
use tenthbit::{Config, ServerHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::TestServer;

/// How long convergence may take before a test fails.
pub const CONVERGE: Duration = Duration::from_secs(20);

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

/// A TCP proxy in one direction of one link.
pub struct Proxy {
    pub addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    mode: watch::Sender<Mode>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
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
                    drop(inbound);
                    continue;
                }
                let to = *t.lock().unwrap();
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
                let mut c = c.lock().unwrap();
                c.retain(|h| !h.is_finished());
                c.push(task);
            }
        });
        Proxy {
            addr,
            target,
            mode,
            conns,
            accept,
        }
    }

    /// Closes every connection and refuses new ones.
    pub fn cut(&self) {
        self.mode.send_replace(Mode::Cut);
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
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
        *self.target.lock().unwrap() = target;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
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
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A node of the test mesh.
pub struct Node {
    pub name: String,
    pub server: Option<TestServer>,
    pub mesh_fingerprint: [u8; 32],
    pub mesh_addr: SocketAddr,
    dir: Option<tempfile::TempDir>,
    peers: Vec<PeerConfig>,
}

impl Node {
    pub fn server(&self) -> &TestServer {
        self.server.as_ref().expect("node is running")
    }

    pub fn handle(&self) -> &ServerHandle {
        &self.server().handle
    }

    pub async fn status(&self) -> Status {
        self.handle()
            .mesh()
            .expect("mesh enabled")
            .status()
            .await
            .expect("status")
    }
}

/// Nodes and the proxies of their links.
pub struct Cluster {
    pub nodes: Vec<Node>,
    /// `(from, to)`: the proxy `from` dials `to` through.
    pub proxies: HashMap<(usize, usize), Proxy>,
    pub server_name: String,
}

/// Fast timers for tests: links notice silence in a second.
pub fn tune(config: &mut Config) {
    config.mesh.keepalive_interval_ms = 200;
    config.mesh.idle_timeout_ms = 1_500;
    config.mesh.redial_min_ms = 20;
    config.mesh.redial_max_ms = 300;
    config.mesh.handshake_timeout_ms = 3_000;
    config.mesh.ticket_timeout_ms = 1_500;
}

impl Cluster {
    /// `n` nodes linked along `edges` (pairs of node indexes).
    pub async fn start(n: usize, edges: &[(usize, usize)]) -> Cluster {
        Self::start_with(n, edges, |_, _| {}).await
    }

    /// As [`Cluster::start`], with each node's config adjusted by `tweak`.
    pub async fn start_with(
        n: usize,
        edges: &[(usize, usize)],
        tweak: impl Fn(usize, &mut Config),
    ) -> Cluster {
        let mut nodes = Vec::new();
        for i in 0..n {
            let dir = tempfile::tempdir().expect("temp dir");
            let name = format!("n{i}");
            let (cert, key) = (
                dir.path().join("certs/mesh.crt"),
                dir.path().join("certs/mesh.key"),
            );
            tenthbit::tls::selfsigned::generate(&name, &cert, &key).expect("mesh cert");
            let id = tenthbit::tls::load_identity(&cert, &key, false, &name).expect("identity");
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind mesh");
            let mesh_addr = listener.local_addr().unwrap();
            drop(listener);
            nodes.push(Node {
                name,
                server: None,
                mesh_fingerprint: id.fingerprint,
                mesh_addr,
                dir: Some(dir),
                peers: Vec::new(),
            });
        }
        let mut proxies = HashMap::new();
        for &(a, b) in edges {
            for (from, to) in [(a, b), (b, a)] {
                let proxy = Proxy::start(nodes[to].mesh_addr).await;
                let peer = PeerConfig {
                    node: nodes[to].name.clone(),
                    addr: Some(proxy.addr),
                    fingerprint: Some(format_fingerprint(&nodes[to].mesh_fingerprint)),
                    ca_file: None,
                };
                nodes[from].peers.push(peer);
                proxies.insert((from, to), proxy);
            }
        }
        let mut cluster = Cluster {
            nodes,
            proxies,
            server_name: "mesh.test".into(),
        };
        for i in 0..n {
            cluster.launch(i, &tweak).await;
        }
        cluster
    }

    /// Starts node `i` on its data directory (again, after a stop).
    pub async fn launch(&mut self, i: usize, tweak: &impl Fn(usize, &mut Config)) {
        let node = &mut self.nodes[i];
        let dir = node.dir.take().expect("node is stopped");
        let listener = TcpListener::bind(node.mesh_addr)
            .await
            .or(TcpListener::bind("127.0.0.1:0").await)
            .expect("bind mesh");
        node.mesh_addr = listener.local_addr().unwrap();
        let (name, peers, server_name) = (
            node.name.clone(),
            node.peers.clone(),
            self.server_name.clone(),
        );
        let root = dir.path().to_owned();
        let server = TestServer::launch_mesh(dir, listener, |c| {
            c.server.name = server_name;
            c.server.node = name;
            c.mesh.enabled = true;
            c.mesh.cert_file = root.join("certs/mesh.crt");
            c.mesh.key_file = root.join("certs/mesh.key");
            c.mesh.peers = peers;
            tune(c);
            tweak(i, c);
        })
        .await;
        self.nodes[i].server = Some(server);
        let addr = self.nodes[i].mesh_addr;
        for ((_, to), p) in &self.proxies {
            if *to == i {
                p.retarget(addr);
            }
        }
    }

    /// Stops node `i`, keeping its data directory.
    pub async fn stop(&mut self, i: usize) {
        let server = self.nodes[i].server.take().expect("running");
        let TestServer { handle, dir, .. } = server;
        handle.shutdown().await;
        self.nodes[i].dir = Some(dir);
    }

    /// Stops node `i` and gives it an empty store (a new incarnation).
    pub async fn wipe(&mut self, i: usize) {
        self.stop(i).await;
        let dir = self.nodes[i].dir.as_ref().unwrap().path().join("data");
        std::fs::remove_dir_all(dir).expect("wipe");
    }

    /// Cuts the link between `a` and `b`, both directions.
    pub fn cut(&self, a: usize, b: usize) {
        self.proxies[&(a, b)].cut();
        self.proxies[&(b, a)].cut();
    }

    /// Restores the link between `a` and `b`.
    pub fn restore(&self, a: usize, b: usize) {
        self.proxies[&(a, b)].restore();
        self.proxies[&(b, a)].restore();
    }

    /// Holds the link between `a` and `b` (silent, not closed).
    pub fn hold(&self, a: usize, b: usize) {
        self.proxies[&(a, b)].hold();
        self.proxies[&(b, a)].hold();
    }

    /// Running nodes' statuses.
    pub async fn statuses(&self, which: &[usize]) -> Vec<Status> {
        let mut out = Vec::new();
        for &i in which {
            out.push(self.nodes[i].status().await);
        }
        out
    }

    /// Waits until the nodes in `which` hold the same state (same version
    /// vector and digest), polling their status; fails after [`CONVERGE`].
    pub async fn converged(&self, which: &[usize]) -> Status {
        let deadline = tokio::time::Instant::now() + CONVERGE;
        loop {
            let s = self.statuses(which).await;
            if s.windows(2)
                .all(|w| w[0].digest == w[1].digest && w[0].vv == w[1].vv)
            {
                return s.into_iter().next().expect("a node");
            }
            if tokio::time::Instant::now() > deadline {
                let view: Vec<_> = s
                    .iter()
                    .map(|s| (&s.node, &s.digest, &s.vv, &s.links))
                    .collect();
                panic!("nodes {which:?} did not converge: {view:#?}");
            }
            // Polling a condition, not waiting out an event.
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until node `i` has exactly the links `up` up.
    pub async fn links_up(&self, i: usize, up: &[usize]) {
        let want: Vec<String> = up.iter().map(|j| self.nodes[*j].name.clone()).collect();
        let deadline = tokio::time::Instant::now() + CONVERGE;
        loop {
            let s = self.nodes[i].status().await;
            let mut have: Vec<String> = s
                .links
                .iter()
                .filter(|l| l.state == "up")
                .map(|l| l.peer.clone())
                .collect();
            have.sort();
            let mut want = want.clone();
            want.sort();
            if have == want {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "node {i}: links up {have:?}, expected {want:?}: {:#?}",
                    s.links
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}
