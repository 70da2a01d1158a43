//! `tenthbitd mesh status`: this node's version vector, a digest of its
//! replicated state, and each link with its peer, state and lag. The
//! running daemon answers on a Unix socket in its data directory (mode
//! 0600: only the daemon's user asks); the CLI prints what it says.

use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tracing::warn;

use super::Inner;
use crate::store::VersionVector;
use crate::tls::pin::format_fingerprint;

/// The socket's file name inside the data directory.
pub const SOCKET: &str = "mesh.sock";

/// A node's view of the mesh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Server name.
    pub server: String,
    /// This node.
    pub node: String,
    /// Its store's incarnation.
    pub incarnation: String,
    /// The mesh listener.
    pub listen: String,
    /// SHA-256 of its mesh certificate (what peers pin).
    pub fingerprint: String,
    /// Highest seq held of each origin.
    pub vv: VersionVector,
    /// Digest of the replicated state: equal on nodes that agree.
    pub digest: String,
    /// Routed packets that came back by a second path and were dropped.
    pub routed_duplicates: u64,
    /// Relayed messages (topics without history) that came again by a
    /// second path and were dropped: the price of flooding.
    pub relay_duplicates: u64,
    /// Relays not queued to a link whose queue was full (that link only).
    pub relay_dropped: u64,
    /// Relays never received on any path, given up after the reorder wait.
    pub relay_skipped: u64,
    /// Presence packets that came again by a second path and were dropped.
    #[serde(default)]
    pub presence_duplicates: u64,
    /// Presence packets never received on any path (the next full list
    /// repairs what they said).
    #[serde(default)]
    pub presence_skipped: u64,
    /// Every other node this one hears presence from.
    #[serde(default)]
    pub presence: Vec<super::presence::OriginStatus>,
    /// One entry per configured peer.
    pub links: Vec<LinkStatus>,
}

/// One peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkStatus {
    /// Its node name.
    pub peer: String,
    /// `up` or `down`.
    pub state: String,
    /// The link in use (a new number for every link this process makes).
    pub link: Option<u64>,
    /// We dialled the link in use.
    pub dialed: Option<bool>,
    /// How long the link has been up.
    pub up_ms: Option<u64>,
    /// Events we hold that the peer did not have at its last ack (lag).
    pub peer_lacks: u64,
    /// Events the peer held at its last ack that we do not.
    pub we_lack: u64,
    /// Events sent over the link in use.
    pub events_out: u64,
    /// Events received over it and applied.
    pub events_in: u64,
    /// Events received over it that were already here.
    pub duplicates_in: u64,
    /// Why the last link to it ended or failed.
    pub last_error: Option<String>,
}

/// Gathers the status of a running mesh.
pub(super) async fn collect(inner: &Arc<Inner>) -> Result<Status, crate::store::Error> {
    let (vv, digest) = inner
        .store
        .call(|db| Ok((db.version_vector()?, db.state_digest()?)))
        .await?;
    let links = inner.links.lock().map(|l| l.clone()).unwrap_or_default();
    let errors = inner
        .last_error
        .lock()
        .map(|e| e.clone())
        .unwrap_or_default();
    let (presence, presence_duplicates, presence_skipped) = super::presence::status(inner);
    let mut out = Vec::new();
    for p in &inner.peers {
        let last_error = errors.get(&p.node).cloned();
        let s = match links.get(&p.node) {
            Some(l) => {
                let acked = l.acked.lock().map(|a| a.clone()).unwrap_or_default();
                LinkStatus {
                    peer: p.node.clone(),
                    state: "up".into(),
                    link: Some(l.id),
                    dialed: Some(l.dialed),
                    up_ms: Some(u64::try_from(l.since.elapsed().as_millis()).unwrap_or(u64::MAX)),
                    peer_lacks: vv.ahead_of(&acked),
                    we_lack: acked.ahead_of(&vv),
                    events_out: l.events_out.load(Ordering::Relaxed),
                    events_in: l.events_in.load(Ordering::Relaxed),
                    duplicates_in: l.duplicates_in.load(Ordering::Relaxed),
                    last_error,
                }
            }
            None => LinkStatus {
                peer: p.node.clone(),
                state: "down".into(),
                link: None,
                dialed: None,
                up_ms: None,
                peer_lacks: 0,
                we_lack: 0,
                events_out: 0,
                events_in: 0,
                duplicates_in: 0,
                last_error,
            },
        };
        out.push(s);
    }
    Ok(Status {
        server: inner.server.clone(),
        node: inner.node.clone(),
        incarnation: inner.incarnation.clone(),
        listen: inner.addr.to_string(),
        fingerprint: format_fingerprint(&inner.fingerprint),
        vv,
        digest,
        routed_duplicates: inner.routed_duplicates.load(Ordering::Relaxed),
        relay_duplicates: inner.relay_duplicates.load(Ordering::Relaxed),
        relay_dropped: inner.relay_dropped.load(Ordering::Relaxed),
        relay_skipped: inner.reorder.lock().map(|r| r.skipped).unwrap_or(0),
        presence_duplicates,
        presence_skipped,
        presence,
        links: out,
    })
}

/// Text for an operator.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "node {} of {} (incarnation {})",
        s.node, s.server, s.incarnation
    );
    let _ = writeln!(
        out,
        "mesh listener {}  fingerprint {}",
        s.listen, s.fingerprint
    );
    let _ = writeln!(out, "state digest {}", s.digest);
    let _ = writeln!(out, "version vector:");
    for (origin, seq) in &s.vv.0 {
        let _ = writeln!(out, "  {origin:<40} {seq}");
    }
    let _ = writeln!(out, "links:");
    for l in &s.links {
        let up = l
            .up_ms
            .map(|ms| format!("up {}s", ms / 1000))
            .unwrap_or_else(|| "down".into());
        let _ = write!(
            out,
            "  {:<16} {:<10} peer lacks {} events, we lack {}; sent {}, received {} (+{} twice)",
            l.peer, up, l.peer_lacks, l.we_lack, l.events_out, l.events_in, l.duplicates_in
        );
        if let Some(e) = &l.last_error {
            let _ = write!(out, "; last: {e}");
        }
        out.push('\n');
    }
    let _ = writeln!(out, "presence:");
    for p in &s.presence {
        let _ = writeln!(
            out,
            "  {:<16} {:<8} {} users, heard {} ms ago",
            p.node,
            if p.live { "online" } else { "silent" },
            p.users,
            p.heard_ms
        );
    }
    let _ = writeln!(
        out,
        "flooding: routed packets dropped as seen {}; relayed messages taken twice {}, \
         not queued to a full link {}, lost on every path {}; presence packets taken twice {}, \
         lost on every path {}",
        s.routed_duplicates,
        s.relay_duplicates,
        s.relay_dropped,
        s.relay_skipped,
        s.presence_duplicates,
        s.presence_skipped
    );
    out
}

/// Answers status queries on `path` until shutdown.
pub(super) async fn serve(inner: Arc<Inner>, path: PathBuf) {
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "mesh: cannot open the status socket");
            return;
        }
    };
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
    loop {
        let accepted = tokio::select! {
            _ = inner.shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let Ok((mut stream, _)) = accepted else {
            continue;
        };
        let inner = inner.clone();
        inner.clone().tracker.spawn(async move {
            let line = match collect(&inner).await {
                Ok(s) => serde_json::to_string(&s).unwrap_or_default(),
                Err(e) => format!("{{\"error\":{}}}", serde_json::Value::from(e.to_string())),
            };
            let _ = stream.write_all(line.as_bytes()).await;
            let _ = stream.write_all(b"\n").await;
            let _ = stream.shutdown().await;
        });
    }
    let _ = std::fs::remove_file(&path);
}

/// Asks the daemon whose data directory is `data_dir`.
pub async fn query(data_dir: &Path) -> std::io::Result<Status> {
    let stream = UnixStream::connect(data_dir.join(SOCKET)).await?;
    let mut lines = tokio::io::BufReader::new(stream).lines();
    let line = lines.next_line().await?.unwrap_or_default();
    serde_json::from_str(&line)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{e}: {line}")))
}
