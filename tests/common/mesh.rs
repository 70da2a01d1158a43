//! Mesh test harness: several nodes of one server in this process, each
//! link through a proxy that can cut, hold and restore it (DESIGN.md §8),
//! so a topology or a partition is a few lines of test code.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tenthbit::bench::cluster::{self, NodePlan, Proxy};
use tenthbit::mesh::status::Status;
use tenthbit::{Config, ServerHandle};

use super::TestServer;

/// How long convergence may take before a test fails.
pub const CONVERGE: Duration = Duration::from_secs(20);

/// A node of the test mesh.
pub struct Node {
    pub name: String,
    pub server: Option<TestServer>,
    pub mesh_fingerprint: [u8; 32],
    pub mesh_addr: SocketAddr,
    plan: NodePlan,
    dir: Option<tempfile::TempDir>,
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
        let dirs: Vec<tempfile::TempDir> = (0..n)
            .map(|_| tempfile::tempdir().expect("temp dir"))
            .collect();
        let paths: Vec<_> = dirs.iter().map(|d| d.path().to_owned()).collect();
        let (plans, proxies) = cluster::plan(&paths, edges).await.expect("plan");
        let nodes = plans
            .into_iter()
            .zip(dirs)
            .map(|(plan, dir)| Node {
                name: plan.name.clone(),
                server: None,
                mesh_fingerprint: plan.mesh_fingerprint,
                mesh_addr: plan.mesh_addr,
                plan,
                dir: Some(dir),
            })
            .collect();
        let mut cluster = Cluster { nodes, proxies };
        for i in 0..n {
            cluster.launch(i, &tweak).await;
        }
        cluster
    }

    /// Starts node `i` on its data directory (again, after a stop).
    pub async fn launch(&mut self, i: usize, tweak: &impl Fn(usize, &mut Config)) {
        let node = &mut self.nodes[i];
        let dir = node.dir.take().expect("node is stopped");
        let listener = cluster::bind_mesh(&mut node.plan, &self.proxies, i)
            .await
            .expect("bind mesh");
        node.mesh_addr = node.plan.mesh_addr;
        let plan = node.plan.clone();
        let server = TestServer::launch_mesh(dir, listener, |c| {
            cluster::configure(&plan, c);
            tweak(i, c);
        })
        .await;
        self.nodes[i].server = Some(server);
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
