//! Mesh workloads (`tenthbit bench-mesh`): nodes started in this process
//! on loopback ([`super::cluster`]), events written straight to a node's
//! store, and the time until every node holds them.
//!
//! - heal: ring-5 split into {0, 1} and {2, 3, 4}, N events written on
//!   each side, then healed: time until all five version vectors and state
//!   digests are equal (the redial after the heal included);
//! - catchup: a node stopped while N events are written elsewhere, then
//!   started: events per second until it holds them all.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use super::cluster::{self, NodePlan, Proxy};
use super::{BenchError, Report};
use crate::change::{Change, Entity};
use crate::{Config, ServerHandle};

/// How long any one convergence may take before the run fails.
const LIMIT: Duration = Duration::from_secs(300);

struct Nodes {
    plans: Vec<NodePlan>,
    proxies: std::collections::HashMap<(usize, usize), Proxy>,
    handles: Vec<Option<ServerHandle>>,
    root: PathBuf,
}

/// What went wrong, said once at the workload's edge as a [`BenchError`].
type Failed = String;

fn failed(what: impl std::fmt::Display) -> Failed {
    what.to_string()
}

impl Nodes {
    async fn start(n: usize, edges: &[(usize, usize)]) -> Result<Nodes, Failed> {
        let root = std::env::temp_dir().join(format!(
            "tenthbit-bench-mesh-{}-{}",
            std::process::id(),
            super::tag()
        ));
        let dirs: Vec<PathBuf> = (0..n).map(|i| root.join(format!("n{i}"))).collect();
        let (plans, proxies) = cluster::plan(&dirs, edges).await.map_err(failed)?;
        let mut nodes = Nodes {
            handles: (0..n).map(|_| None).collect(),
            plans,
            proxies,
            root,
        };
        for i in 0..n {
            nodes.launch(i).await?;
        }
        Ok(nodes)
    }

    async fn launch(&mut self, i: usize) -> Result<(), Failed> {
        let plan = self
            .plans
            .get_mut(i)
            .ok_or_else(|| failed("no such node"))?;
        let mesh = cluster::bind_mesh(plan, &self.proxies, i)
            .await
            .map_err(failed)?;
        let mut config = Config::default();
        cluster::configure(plan, &mut config);
        let client = TcpListener::bind("127.0.0.1:0").await.map_err(failed)?;
        let handle = crate::start_with_mesh(config, vec![client], Some(mesh))
            .await
            .map_err(failed)?;
        if let Some(h) = self.handles.get_mut(i) {
            *h = Some(handle);
        }
        Ok(())
    }

    async fn stop(&mut self, i: usize) {
        if let Some(h) = self.handles.get_mut(i).and_then(Option::take) {
            h.shutdown().await;
        }
    }

    fn handle(&self, i: usize) -> Result<&ServerHandle, Failed> {
        self.handles
            .get(i)
            .and_then(Option::as_ref)
            .ok_or_else(|| failed("node not running"))
    }

    fn proxy(&self, from: usize, to: usize) -> Result<&Proxy, Failed> {
        self.proxies
            .get(&(from, to))
            .ok_or_else(|| failed("no such link"))
    }

    fn cut(&self, a: usize, b: usize) -> Result<(), Failed> {
        self.proxy(a, b)?.cut();
        self.proxy(b, a)?.cut();
        Ok(())
    }

    fn restore(&self, a: usize, b: usize) -> Result<(), Failed> {
        self.proxy(a, b)?.restore();
        self.proxy(b, a)?.restore();
        Ok(())
    }

    /// Waits until the nodes hold equal version vectors, then equal
    /// digests; returns how long that took.
    async fn converge(&self, which: &[usize]) -> Result<Duration, Failed> {
        let start = Instant::now();
        loop {
            let mut vvs = Vec::new();
            for &i in which {
                let store = self.handle(i)?.store();
                vvs.push(store.call(|db| db.version_vector()).await.map_err(failed)?);
            }
            if vvs.windows(2).all(|w| w[0] == w[1]) {
                let mut digests = Vec::new();
                for &i in which {
                    let store = self.handle(i)?.store();
                    digests.push(store.call(|db| db.state_digest()).await.map_err(failed)?);
                }
                if digests.windows(2).all(|w| w[0] == w[1]) {
                    return Ok(start.elapsed());
                }
            }
            if start.elapsed() > LIMIT {
                return Err(failed("the nodes did not converge in time"));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Waits until node `i` has exactly `up` links up.
    async fn links(&self, i: usize, up: usize) -> Result<(), Failed> {
        let start = Instant::now();
        loop {
            let mesh = self.handle(i)?.mesh().ok_or_else(|| failed("mesh off"))?;
            let s = mesh.status().await.map_err(failed)?;
            if s.links.iter().filter(|l| l.state == "up").count() == up {
                return Ok(());
            }
            if start.elapsed() > LIMIT {
                return Err(failed("links did not settle"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn shutdown(mut self) {
        for i in 0..self.handles.len() {
            self.stop(i).await;
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Writes `n` register changes on node `i`, committed in groups.
async fn write_events(nodes: &Nodes, i: usize, n: u64) -> Result<(), Failed> {
    let store = nodes.handle(i)?.store();
    let account = Entity::Account(uuid::Uuid::now_v7());
    let mut pending = Vec::with_capacity(1024);
    for k in 0..n {
        let change = Change::new("bench").set(account, &format!("meta:k{}", k % 64), k);
        pending.push(store.enqueue(vec![change]).await.map_err(failed)?);
        if pending.len() == 1024 {
            for p in pending.drain(..) {
                committed(p).await?;
            }
        }
    }
    for p in pending {
        committed(p).await?;
    }
    Ok(())
}

/// Waits for queued changes; the first that failed is the error.
async fn committed(p: crate::store::Pending) -> Result<(), Failed> {
    for outcome in p.wait().await {
        outcome.map_err(failed)?;
    }
    Ok(())
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted
        .get(i)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// Ring-5 partitioned and healed `runs` times, `events` events per side.
pub async fn heal(runs: usize, events: u64) -> Result<Report, BenchError> {
    let ring = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 0)];
    let nodes = Nodes::start(5, &ring).await.map_err(BenchError::Refused)?;
    let all = [0, 1, 2, 3, 4];
    let outcome = async {
        nodes.converge(&all).await?;
        let mut times = Vec::new();
        for _ in 0..runs {
            nodes.cut(1, 2)?;
            nodes.cut(4, 0)?;
            nodes.links(0, 1).await?;
            nodes.links(3, 2).await?;
            let (a, b) = tokio::join!(
                write_events(&nodes, 0, events),
                write_events(&nodes, 3, events)
            );
            a?;
            b?;
            nodes.converge(&[0, 1]).await?;
            nodes.converge(&[2, 3, 4]).await?;
            nodes.restore(1, 2)?;
            nodes.restore(4, 0)?;
            times.push(nodes.converge(&all).await?);
        }
        times.sort_unstable();
        Ok::<_, Failed>(times)
    }
    .await;
    nodes.shutdown().await;
    let times = outcome.map_err(BenchError::Refused)?;
    Ok(Report {
        workload: format!("mesh heal: ring-5, {events} events per side, {runs} runs"),
        notes: vec![
            (
                "heal to equal digests p50".into(),
                format!("{:.0} ms", percentile(&times, 0.5)),
            ),
            (
                "heal to equal digests max".into(),
                format!("{:.0} ms", percentile(&times, 1.0)),
            ),
        ],
        ..Report::default()
    })
}

/// A node restarted `events` events behind: how fast it catches up.
pub async fn catchup(events: u64) -> Result<Report, BenchError> {
    let mut nodes = Nodes::start(2, &[(0, 1)])
        .await
        .map_err(BenchError::Refused)?;
    let outcome = async {
        nodes.converge(&[0, 1]).await?;
        nodes.stop(1).await;
        write_events(&nodes, 0, events).await?;
        let start = Instant::now();
        nodes.launch(1).await?;
        nodes.links(1, 1).await?;
        let linked = Instant::now();
        nodes.converge(&[0, 1]).await?;
        Ok::<_, Failed>((start.elapsed(), linked.elapsed()))
    }
    .await;
    nodes.shutdown().await;
    let (took, from_link) = outcome.map_err(BenchError::Refused)?;
    let rate = events as f64 / from_link.as_secs_f64().max(1e-9);
    Ok(Report {
        workload: format!("mesh catch-up: a node restarted {events} events behind"),
        seconds: took.as_secs_f64(),
        notes: vec![
            (
                "caught up in".into(),
                format!(
                    "{:.0} ms from the node's start, {:.0} ms from its link up",
                    took.as_secs_f64() * 1000.0,
                    from_link.as_secs_f64() * 1000.0
                ),
            ),
            (
                "events per second from link up".into(),
                format!("{rate:.0}"),
            ),
        ],
        ..Report::default()
    })
}
