//! The mesh (DESIGN.md §8): nodes of one server in this process, every link
//! through a proxy that cuts, holds and restores it. Replication over every
//! shape, restarts, wiped stores, partitions that heal to one state, link
//! rules, tickets across nodes.

#[path = "common/mesh.rs"]
mod cluster;
mod common;

use cluster::Cluster;
use common::*;
use futures_util::FutureExt;
use serde_json::json;
use tenthbit::client::Client;
use tenthbit::proto::Packet;

const PW: &str = "hellosecret";

async fn create(c: &mut Client, name: &str) -> String {
    let p = request(c, Packet::request("create").with("name", name)).await;
    assert_eq!(p.op, "meta", "{p:?}");
    p.topic.clone().unwrap()
}

/// Line-3 … barbell: what is done on any node is on every node.
async fn replicates_over(n: usize, edges: &[(usize, usize)]) {
    let c = Cluster::start(n, edges).await;
    let all: Vec<usize> = (0..n).collect();
    for i in 0..n {
        c.nodes[i].server().register(&format!("user{i}"), PW).await;
    }
    let mut owner = c.nodes[0].server().login("user0", PW).await;
    let topic = create(&mut owner, "hall").await;
    c.converged(&all).await;
    // Every account logs in on every node, and the topic is known there.
    for i in 0..n {
        let j = (i + 1) % n;
        let mut u = c.nodes[j].server().login(&format!("user{i}"), PW).await;
        let p = request(&mut u, on("join", &topic)).await;
        assert_eq!(p.op, "meta", "node {j}: {p:?}");
    }
    c.converged(&all).await;
    for i in 0..n {
        c.links_up(i, &neighbours(i, edges)).await;
    }
}

fn neighbours(i: usize, edges: &[(usize, usize)]) -> Vec<usize> {
    edges
        .iter()
        .filter_map(|&(a, b)| {
            if a == i {
                Some(b)
            } else if b == i {
                Some(a)
            } else {
                None
            }
        })
        .collect()
}

const LINE3: &[(usize, usize)] = &[(0, 1), (1, 2)];
const TRIANGLE: &[(usize, usize)] = &[(0, 1), (1, 2), (2, 0)];
const STAR4: &[(usize, usize)] = &[(0, 1), (0, 2), (0, 3)];
const RING5: &[(usize, usize)] = &[(0, 1), (1, 2), (2, 3), (3, 4), (4, 0)];
/// Two triangles joined by the bridge 2–3.
const BARBELL: &[(usize, usize)] = &[(0, 1), (1, 2), (2, 0), (2, 3), (3, 4), (4, 5), (5, 3)];

#[tokio::test]
async fn replicates_over_a_line() {
    replicates_over(3, LINE3).await;
}

#[tokio::test]
async fn replicates_over_a_triangle() {
    replicates_over(3, TRIANGLE).await;
}

#[tokio::test]
async fn replicates_over_a_star() {
    replicates_over(4, STAR4).await;
}

#[tokio::test]
async fn replicates_over_a_ring() {
    replicates_over(5, RING5).await;
}

#[tokio::test]
async fn replicates_over_a_barbell() {
    replicates_over(6, BARBELL).await;
}

/// A kept message sent on one end of a line reaches a member connected to
/// the other end, the same packet as on the sender's node, in order.
#[tokio::test]
async fn kept_messages_reach_members_on_other_nodes_in_order() {
    // Short keepalives: a link that stopped sending them would be dropped
    // (and replaced) within the test.
    let c = Cluster::start_with(3, LINE3, |_, cfg| {
        cfg.mesh.keepalive_interval_ms = 100;
        cfg.mesh.idle_timeout_ms = 1_000;
    })
    .await;
    for i in 0..3 {
        c.links_up(i, &neighbours(i, LINE3)).await;
    }
    c.nodes[0].server().register("dan", PW).await;
    c.nodes[0].server().register("bob", PW).await;
    let mut dan = c.nodes[0].server().login("dan", PW).await;
    let topic = create(&mut dan, "hall").await;
    c.converged(&[0, 1, 2]).await;
    let mut bob_far = c.nodes[2].server().login("bob", PW).await;
    assert_eq!(request(&mut bob_far, on("join", &topic)).await.op, "meta");
    // The join is an event too: node 0 knows bob is a member once it has it.
    c.converged(&[0, 1, 2]).await;
    let mut bob_near = c.nodes[0].server().login("bob", PW).await;
    expect_op(&mut bob_near, "meta").await; // the topic, at login
    for n in 0..150 {
        let ack = request(&mut dan, on("send", &topic).with("data", n)).await;
        assert_eq!(ack.op, "ack", "{ack:?}");
    }
    for n in 0..150 {
        let far = expect_op(&mut bob_far, "send").await;
        let near = expect_op(&mut bob_near, "send").await;
        assert_eq!(far.ex.get("data"), Some(&json!(n)));
        assert_eq!(far, near, "the relay is the same on every node");
        assert_eq!(far.from.as_deref(), Some("dan"));
    }
    // Busy links keep sending keepalives: none was dropped for silence.
    // (Link ids are not compared: a link dialled at start by the node with
    // the smaller name may still replace the other side's once both are up.)
    for s in c.statuses(&[0, 1, 2]).await {
        for l in &s.links {
            assert_eq!(l.state, "up", "{}: {l:?}", s.node);
            let why = l.last_error.as_deref().unwrap_or_default();
            assert!(
                !why.contains("mesh/idle") && !why.contains("stopped reading"),
                "{}: a link to {} was dropped: {why}",
                s.node,
                l.peer
            );
        }
    }
}

fn ticket_auth(ticket: &str) -> Packet {
    Packet::request("auth")
        .with("method", "ticket")
        .with("ticket", ticket)
        .with("server", "mesh.test")
}

async fn ticket(c: &mut Client) -> String {
    let p = request(c, Packet::request("ticket")).await;
    assert_eq!(p.op, "ticket", "{p:?}");
    p.ex_str("ticket").unwrap().to_owned()
}

async fn history_data(c: &mut Client, topic: &str) -> Vec<serde_json::Value> {
    let h = request(c, on("history", topic).with("limit", 200)).await;
    assert_eq!(h.op, "history", "{h:?}");
    h.ex["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["ex"]["data"].clone())
        .collect()
}

/// A node of a ring stops while the others go on; restarted, it catches up
/// and every acknowledged change and kept message is there.
#[tokio::test]
async fn a_restarted_node_catches_up() {
    let mut c = Cluster::start(5, RING5).await;
    c.nodes[0].server().register("dan", PW).await;
    let mut dan = c.nodes[0].server().login("dan", PW).await;
    let topic = create(&mut dan, "hall").await;
    c.converged(&[0, 1, 2, 3, 4]).await;
    c.stop(2).await;
    for n in 0..30 {
        assert_eq!(
            request(&mut dan, on("send", &topic).with("data", n))
                .await
                .op,
            "ack"
        );
    }
    c.nodes[4].server().register("late", PW).await;
    c.launch(2, &|_, _| {}).await;
    c.converged(&[0, 1, 2, 3, 4]).await;
    let mut dan2 = c.nodes[2].server().login("dan", PW).await;
    let expected: Vec<serde_json::Value> = (0..30).map(|n| json!(n)).collect();
    assert_eq!(history_data(&mut dan2, &topic).await, expected);
    c.nodes[2].server().login("late", PW).await;
}

/// A node whose store is wiped comes back as a new origin (a new
/// incarnation): it gets everything, and its new events collide with none.
#[tokio::test]
async fn a_wiped_node_is_a_new_origin() {
    let mut c = Cluster::start(3, TRIANGLE).await;
    c.nodes[2].server().register("old", PW).await;
    let before = c.converged(&[0, 1, 2]).await;
    c.wipe(2).await;
    c.launch(2, &|_, _| {}).await;
    c.nodes[2].server().register("new", PW).await;
    let after = c.converged(&[0, 1, 2]).await;
    let n2: Vec<&String> = after.vv.0.keys().filter(|k| k.starts_with("n2/")).collect();
    assert_eq!(n2.len(), 2, "two incarnations of n2: {:?}", after.vv);
    assert!(before.vv.0.iter().all(|(k, v)| after.vv.get(k) >= *v));
    for i in 0..3 {
        c.nodes[i].server().login("old", PW).await;
        c.nodes[i].server().login("new", PW).await;
    }
}

/// Ring-5 split in two; both sides change the same things; healed, every
/// node holds one state by the §4a rules.
#[tokio::test]
async fn a_healed_partition_converges() {
    let c = Cluster::start(5, RING5).await;
    let (a, b) = (c.nodes[0].server(), c.nodes[3].server());
    a.register("dan", PW).await;
    a.register("bob", PW).await;
    let mut dan_a = a.login("dan", PW).await;
    let topic = create(&mut dan_a, "hall").await;
    let doomed = create(&mut dan_a, "doomed").await;
    let mut bob_a = a.login("bob", PW).await;
    assert_eq!(request(&mut bob_a, on("join", &topic)).await.op, "meta");
    c.converged(&[0, 1, 2, 3, 4]).await;
    let mut dan_b = b.login("dan", PW).await;

    // Sides {0, 1} and {2, 3, 4}.
    c.cut(1, 2);
    c.cut(4, 0);
    c.links_up(0, &[1]).await;
    c.links_up(3, &[2, 4]).await;

    a.register("eve", "passwordA").await;
    b.register("eve", "passwordB").await;
    let rename = |name: &str| on("meta", &topic).with("name", name);
    assert_eq!(request(&mut dan_a, rename("alpha")).await.op, "ack");
    assert_eq!(request(&mut dan_b, rename("beta")).await.op, "ack");
    let describe = |d: &str| on("meta", &topic).with("description", d);
    assert_eq!(request(&mut dan_a, describe("from a")).await.op, "ack");
    assert_eq!(request(&mut dan_b, describe("from b")).await.op, "ack");
    let acl = |flags: &str| {
        on("acl", &topic)
            .with("subject", "bob")
            .with("grant", json!([flags]))
    };
    assert_eq!(request(&mut dan_a, acl("write")).await.op, "ack");
    assert_eq!(request(&mut dan_b, acl("ban")).await.op, "ack");
    assert_eq!(request(&mut dan_a, on("delete", &doomed)).await.op, "ack");
    assert_eq!(
        request(
            &mut dan_b,
            on("meta", &doomed).with("description", "still here?")
        )
        .await
        .op,
        "ack"
    );
    let mut eve_b = b.login("eve", "passwordB").await;
    assert_eq!(request(&mut eve_b, on("join", &topic)).await.op, "meta");
    for n in 0..5 {
        assert_eq!(
            request(&mut dan_a, on("send", &topic).with("data", format!("a{n}")))
                .await
                .op,
            "ack"
        );
        assert_eq!(
            request(&mut dan_b, on("send", &topic).with("data", format!("b{n}")))
                .await
                .op,
            "ack"
        );
    }
    assert_ne!(
        c.nodes[0].status().await.digest,
        c.nodes[3].status().await.digest
    );

    c.restore(1, 2);
    c.restore(4, 0);
    c.converged(&[0, 1, 2, 3, 4]).await;

    // One name, one description, the ban wins, the delete holds, both
    // sides' messages are kept, and the later "eve" is shown with a suffix.
    let mut seen_meta = Vec::new();
    for i in 0..5 {
        let s = c.nodes[i].server();
        let mut dan = s.login("dan", PW).await;
        let m = request(&mut dan, on("meta", &topic)).await;
        assert_eq!(m.op, "meta", "{m:?}");
        seen_meta.push((
            m.ex_str("name").map(str::to_owned),
            m.ex_str("description").map(str::to_owned),
        ));
        let mut data = history_data(&mut dan, &topic).await;
        data.sort_by_key(|v| v.to_string());
        assert_eq!(data.len(), 10, "node {i}: {data:?}");
        let gone = request(&mut dan, on("meta", &doomed)).await;
        assert_eq!(gone.ex_str("code"), Some("topic/not-found"), "node {i}");
        let mut bob = s.login("bob", PW).await;
        // The ban also ended bob's membership; joining again is refused.
        let denied = request(&mut bob, on("join", &topic)).await;
        assert_eq!(
            denied.ex_str("code"),
            Some("acl/denied"),
            "node {i}: {denied:?}"
        );
        let members: Vec<String> = m.ex["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        let later = members
            .iter()
            .find(|n| n.starts_with("eve~"))
            .unwrap_or_else(|| panic!("node {i}: no eve~ member in {members:?}"));
        s.login(later, "passwordB").await;
        s.login("eve", "passwordA").await;
    }
    assert!(seen_meta.windows(2).all(|w| w[0] == w[1]), "{seen_meta:?}");
    let (name, desc) = &seen_meta[0];
    assert!(
        matches!(name.as_deref(), Some("alpha" | "beta")),
        "{name:?}"
    );
    assert!(
        matches!(desc.as_deref(), Some("from a" | "from b")),
        "{desc:?}"
    );
}

/// A link that goes silent (both sockets open, nothing moving) is dropped
/// and, once traffic flows again, replaced by exactly one new link.
#[tokio::test]
async fn a_silent_link_is_dropped_and_replaced_by_one() {
    let c = Cluster::start(3, TRIANGLE).await;
    for i in 0..3 {
        c.links_up(i, &neighbours(i, TRIANGLE)).await;
    }
    c.hold(0, 1);
    c.links_up(0, &[2]).await;
    c.links_up(1, &[2]).await;
    // Changes still reach both ends by the other path.
    c.nodes[0].server().register("dan", PW).await;
    c.converged(&[0, 1, 2]).await;
    c.restore(0, 1);
    for i in 0..3 {
        c.links_up(i, &neighbours(i, TRIANGLE)).await;
    }
    c.nodes[1].server().register("bob", PW).await;
    c.converged(&[0, 1, 2]).await;
}

/// A store busy for longer than the idle timeout (a long commit, a slow
/// disk) costs no link: the writer waiting on it for a catch-up read keeps
/// sending keepalives.
#[tokio::test]
async fn a_busy_store_keeps_its_links() {
    let c = Cluster::start_with(2, &[(0, 1)], |_, cfg| {
        cfg.mesh.keepalive_interval_ms = 100;
        cfg.mesh.idle_timeout_ms = 1_000;
    })
    .await;
    c.links_up(0, &[1]).await;
    c.links_up(1, &[0]).await;
    // A round trip over the link: both ends' start-up dials are settled.
    c.nodes[1].server().register("dan", PW).await;
    c.converged(&[0, 1]).await;
    let before = std::time::Instant::now();
    // Node 0's store, in this order: an account, whose sync wakes the
    // link's writer to read what node 1 lacks; then a job that holds the
    // store thread, so that read waits behind it.
    let store = c.nodes[0].handle().store();
    let mut account = std::pin::pin!(store.call_synced(|db| db.create_account("kim", "x")));
    assert!((&mut account).now_or_never().is_none(), "queued");
    let (release, held) = std::sync::mpsc::channel::<()>();
    let mut hold = std::pin::pin!(store.call(move |_| {
        let _ = held.recv();
        Ok(())
    }));
    assert!((&mut hold).now_or_never().is_none(), "queued");
    account.await.expect("account synced");
    // The stall itself, three idle timeouts long (not a wait for an event).
    tokio::time::sleep(std::time::Duration::from_millis(3_000)).await;
    release.send(()).expect("the hold is running");
    hold.await.expect("hold released");
    c.converged(&[0, 1]).await;
    let stalled = u64::try_from(before.elapsed().as_millis()).expect("ms");
    for s in c.statuses(&[0, 1]).await {
        let l = s.links.first().expect("one link");
        assert_eq!(l.state, "up", "{}: {l:?}", s.node);
        assert!(
            l.up_ms.unwrap_or_default() >= stalled,
            "{}: the link was replaced during the stall: {l:?}",
            s.node
        );
    }
}

/// A ticket is redeemed by the node that issued it, wherever it is
/// presented; once only; `ticket/unavailable` while the issuer is gone.
#[tokio::test]
async fn tickets_are_redeemed_by_their_issuer() {
    let mut c = Cluster::start(3, LINE3).await;
    c.nodes[0].server().register("dan", PW).await;
    c.converged(&[0, 1, 2]).await;
    let mut home = c.nodes[0].server().login("dan", PW).await;

    // Two hops away, and only once.
    let t = ticket(&mut home).await;
    let mut far = c.nodes[2].server().client().await;
    let p = request(&mut far, ticket_auth(&t)).await;
    assert_eq!(p.op, "ack", "{p:?}");
    let mut again = c.nodes[1].server().client().await;
    let p = request(&mut again, ticket_auth(&t)).await;
    assert_eq!(p.ex_str("code"), Some("ticket/invalid"), "{p:?}");

    // Presented at two nodes at once: one login at most.
    let t = ticket(&mut home).await;
    let mut x = c.nodes[1].server().client().await;
    let mut y = c.nodes[2].server().client().await;
    let (px, py) = tokio::join!(
        request(&mut x, ticket_auth(&t)),
        request(&mut y, ticket_auth(&t))
    );
    let oks = [&px, &py].iter().filter(|p| p.op == "ack").count();
    assert_eq!(oks, 1, "{px:?} {py:?}");

    // The issuer is gone: unavailable, and the ticket is not spent.
    let t = ticket(&mut home).await;
    drop(home);
    c.stop(0).await;
    let mut z = c.nodes[2].server().client().await;
    let p = request(&mut z, ticket_auth(&t)).await;
    assert_eq!(p.ex_str("code"), Some("ticket/unavailable"), "{p:?}");
    c.launch(0, &|_, _| {}).await;
    c.links_up(1, &[0, 2]).await;
    let p = request(&mut z, ticket_auth(&t)).await;
    assert_eq!(p.op, "ack", "{p:?}");
}

/// A test-made peer: its own certificate, speaking raw mesh lines.
struct Fake {
    identity: tenthbit::tls::Identity,
    _dir: tempfile::TempDir,
}

impl Fake {
    fn new(name: &str) -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("f.crt"), dir.path().join("f.key"));
        tenthbit::tls::selfsigned::generate(name, &cert, &key).unwrap();
        let identity = tenthbit::tls::load_identity(&cert, &key, false, name).unwrap();
        Fake {
            identity,
            _dir: dir,
        }
    }

    fn peer_entry(&self, name: &str) -> tenthbit::mesh::config::PeerConfig {
        tenthbit::mesh::config::PeerConfig {
            node: name.into(),
            addr: None,
            fingerprint: Some(tenthbit::tls::pin::format_fingerprint(
                &self.identity.fingerprint,
            )),
            ca_file: None,
        }
    }

    /// Connects to `node`, reads its hello.
    async fn dial(&self, node: &cluster::Node) -> (FakeLink, serde_json::Value) {
        use tenthbit::tls::mesh::{Peer, PeerCert, dial_name, dialer_config};
        let peer = Peer {
            node: node.name.clone(),
            cert: PeerCert::Fingerprint(node.mesh_fingerprint),
        };
        let connector =
            tokio_rustls::TlsConnector::from(dialer_config(&self.identity, &peer).unwrap());
        let tcp = tokio::net::TcpStream::connect(node.mesh_addr)
            .await
            .unwrap();
        let tls = connector
            .connect(dial_name(&peer).unwrap(), tcp)
            .await
            .unwrap();
        // The listener's cipher order decides: AES-128-GCM, though rustls
        // dialers list AES-256 first.
        assert_eq!(
            tls.get_ref().1.negotiated_cipher_suite().map(|s| s.suite()),
            Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
        let (rd, wr) = tokio::io::split(tls);
        let mut link = FakeLink {
            lines: tokio::io::BufReader::new(rd).lines(),
            wr,
        };
        let hello = link.recv().await.expect("hello");
        assert_eq!(hello["op"], "mesh.hello", "{hello}");
        (link, hello)
    }
}

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

struct FakeLink {
    lines: tokio::io::Lines<
        tokio::io::BufReader<
            tokio::io::ReadHalf<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
        >,
    >,
    wr: tokio::io::WriteHalf<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
}

impl FakeLink {
    async fn send(&mut self, line: &str) {
        self.wr.write_all(line.as_bytes()).await.unwrap();
        self.wr.write_all(b"\n").await.unwrap();
        self.wr.flush().await.unwrap();
    }

    async fn recv(&mut self) -> Option<serde_json::Value> {
        let line = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .expect("a line in time")
            .ok()??;
        Some(serde_json::from_str(&line).expect("json"))
    }

    /// Reads until `mesh.error`, which must carry `code`; then the end.
    async fn expect_refusal(&mut self, code: &str) {
        loop {
            let p = self
                .recv()
                .await
                .unwrap_or_else(|| panic!("closed without {code}"));
            if p["op"] == "mesh.error" {
                assert_eq!(p["ex"]["code"], code, "{p}");
                assert!(p["ex"]["message"].as_str().is_some_and(|m| !m.is_empty()));
                assert!(
                    self.recv().await.is_none(),
                    "the link ends after mesh.error"
                );
                return;
            }
        }
    }
}

fn hello(node: &str, server: &str, proto: u32, now_ms: i64) -> String {
    json!({"op": "mesh.hello", "ex": {"server": server, "node": node, "incarnation": "feedfeedfeedfeed",
        "proto": proto, "vv": {}, "now_ms": now_ms}})
    .to_string()
}

fn event(o: &str, i: &str, s: u64, p: u64) -> String {
    json!({"op": "mesh.event", "ex": {"o": o, "i": i, "s": s, "p": p, "h": 1u64 << 40,
        "c": {"kind": "account.meta", "writes": [{"e": "server", "f": "meta:x", "v": 1}]}}})
    .to_string()
}

/// Every kind of bad peer gets a stable code and nothing it sent is applied.
#[tokio::test]
async fn bad_peers_are_refused_with_stable_codes() {
    let fake = Fake::new("n9");
    let entry = fake.peer_entry("n9");
    let c = Cluster::start_with(1, &[], move |_, cfg| {
        cfg.mesh.peers.push(entry.clone());
        cfg.mesh.max_packet_bytes = 64 * 1024;
        // Room in a packet for a client's line (config validation).
        cfg.limits.max_line_bytes = 32 * 1024;
    })
    .await;
    let node = &c.nodes[0];
    let now = tenthbit::proto::id::now_ms();
    let cases: Vec<(String, &str)> = vec![
        (
            hello("n9", "mesh.test", 1, now + 3_600_000),
            "mesh/clock-skew",
        ),
        (hello("n9", "mesh.test", 99, now), "mesh/proto"),
        (hello("n9", "other.test", 1, now), "mesh/server-mismatch"),
        (hello("n7", "mesh.test", 1, now), "mesh/node-mismatch"),
        ("{\"op\":\"mesh.event\",\"ex\":{}}".into(), "mesh/malformed"),
        ("not json".into(), "mesh/malformed"),
    ];
    for (line, code) in cases {
        let (mut link, _) = fake.dial(node).await;
        link.send(&line).await;
        link.expect_refusal(code).await;
    }
    // After a good hello: oversized, garbage, our own origin, a gap.
    let (mut link, theirs) = fake.dial(node).await;
    let own_inc = theirs["ex"]["incarnation"].as_str().unwrap().to_owned();
    let own_seq = theirs["ex"]["vv"][format!("n0/{own_inc}")]
        .as_u64()
        .unwrap();
    link.send(&hello("n9", "mesh.test", 1, now)).await;
    link.send(&"x".repeat(100 * 1024)).await;
    link.expect_refusal("mesh/too-large").await;
    for (line, code) in [
        (
            "{\"op\":\"mesh.ack\",\"ex\":{\"vv\":[]}}".to_owned(),
            "mesh/malformed",
        ),
        (
            event("n0", &own_inc, own_seq + 1, own_seq),
            "mesh/own-origin",
        ),
        (event("n9", "abcd", 5, 3), "mesh/gap"),
        (hello("n9", "mesh.test", 1, now), "mesh/malformed"),
        // A clock the store cannot hold as it is (it would come back
        // negative, and every later change of this node would lose).
        (
            event("n9", "abcd", 1, 0).replace(&(1u64 << 40).to_string(), &u64::MAX.to_string()),
            "mesh/malformed",
        ),
    ] {
        let (mut link, _) = fake.dial(node).await;
        link.send(&hello("n9", "mesh.test", 1, now)).await;
        link.send(&line).await;
        link.expect_refusal(code).await;
    }
    let s = node.status().await;
    assert!(
        s.vv.0.keys().all(|k| k.starts_with("n0/")),
        "nothing applied: {:?}",
        s.vv
    );

    // A good event is applied, and an unknown certificate never gets in.
    let (mut link, _) = fake.dial(node).await;
    link.send(&hello("n9", "mesh.test", 1, now)).await;
    link.send(&event("n9", "abcd", 1, 0)).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while node.status().await.vv.get("n9/abcd") != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the good event was not applied"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let stranger = Fake::new("n9");
    use tenthbit::tls::mesh::{Peer, PeerCert, dial_name, dialer_config};
    let peer = Peer {
        node: "n0".into(),
        cert: PeerCert::Fingerprint(node.mesh_fingerprint),
    };
    let connector =
        tokio_rustls::TlsConnector::from(dialer_config(&stranger.identity, &peer).unwrap());
    let tcp = tokio::net::TcpStream::connect(node.mesh_addr)
        .await
        .unwrap();
    let refused = match connector.connect(dial_name(&peer).unwrap(), tcp).await {
        Err(_) => true,
        // TLS 1.3: the client may finish before the server's verdict.
        Ok(tls) => {
            let mut lines = tokio::io::BufReader::new(tls).lines();
            matches!(
                tokio::time::timeout(WAIT, lines.next_line()).await,
                Ok(Err(_) | Ok(None))
            )
        }
    };
    assert!(refused, "a certificate of no configured peer is refused");
}

/// A peer pinned with the wrong fingerprint never links, and says why.
#[tokio::test]
async fn a_wrong_certificate_is_refused() {
    let c = Cluster::start_with(2, &[(0, 1)], |i, cfg| {
        if i == 1 {
            cfg.mesh.peers[0].fingerprint = Some("AB:".repeat(31) + "AB");
        }
    })
    .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = c.nodes[1].status().await;
        let l = &s.links[0];
        assert_eq!(l.state, "down");
        if l.last_error
            .as_deref()
            .is_some_and(|e| e.contains("certificate"))
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{:?}", s.links);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(c.nodes[0].status().await.links[0].state, "down");
}

/// Every text of a node's events and registers.
fn node_store(node: &cluster::Node) -> String {
    store_text(&node.server().dir.path().join("data"))
}

/// An account deleted on one node leaves no password hash and no public
/// key in the other node's store either: the redaction is in the apply
/// path that replicated events take too.
#[tokio::test]
async fn a_deleted_accounts_secrets_leave_every_node() {
    let c = Cluster::start(2, &[(0, 1)]).await;
    c.nodes[0].server().register("dan", PW).await;
    let mut dan = c.nodes[0].server().login("dan", PW).await;
    let key = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
    let p = request(&mut dan, Packet::request("key-add").with("key", key)).await;
    assert_eq!(p.op, "ack", "{p:?}");
    c.converged(&[0, 1]).await;
    let before = node_store(&c.nodes[1]);
    assert!(before.contains("$argon2") && before.contains(key));
    let p = request(
        &mut dan,
        Packet::request("delete-account").with("password", PW),
    )
    .await;
    assert_eq!(p.op, "export", "{p:?}");
    c.converged(&[0, 1]).await;
    for node in &c.nodes {
        let text = node_store(node);
        assert!(!text.contains("$argon2"), "{}: {text}", node.name);
        assert!(!text.contains(key), "{}: {text}", node.name);
        assert!(text.contains("account.delete"), "{}: {text}", node.name);
    }
}

/// A kept message's numbers reach members on another node, and that
/// node's history, with every digit.
#[tokio::test]
async fn numbers_cross_the_mesh_as_sent() {
    let c = Cluster::start(2, &[(0, 1)]).await;
    c.nodes[0].server().register("dan", PW).await;
    c.nodes[0].server().register("bob", PW).await;
    let mut dan = c.nodes[0].server().login("dan", PW).await;
    let topic = create(&mut dan, "nums").await;
    c.converged(&[0, 1]).await;
    let mut bob = c.nodes[1].server().login("bob", PW).await;
    assert_eq!(request(&mut bob, on("join", &topic)).await.op, "meta");
    c.converged(&[0, 1]).await;
    let ex = r#"{"big":18446744073709551617,"pi":3.14159265358979323846264338327950288}"#;
    let line = format!(r#"{{"op":"send","id":"s1","topic":"{topic}","ex":{ex}}}"#);
    dan.send_raw(format!("{line}\n").as_bytes()).await.unwrap();
    let wanted = format!(r#","ex":{ex}}}"#);
    let relay = line_with_op(&mut bob, "send").await;
    assert!(relay.ends_with(&wanted), "{relay}");
    bob.send_raw(format!("{{\"op\":\"history\",\"id\":\"h\",\"topic\":\"{topic}\"}}\n").as_bytes())
        .await
        .unwrap();
    let history = line_with_op(&mut bob, "history").await;
    assert!(history.contains(&format!(r#""ex":{ex}"#)), "{history}");
}

/// The mesh benchmark's workloads run end to end (small sizes; the
/// figures are measured in release builds, never asserted).
#[tokio::test]
async fn mesh_benchmark_workloads_run() {
    let heal = tenthbit::bench::mesh::heal(1, 200).await.expect("heal");
    assert!(
        heal.notes.iter().any(|(k, _)| k.contains("p50")),
        "{heal:?}"
    );
    let catchup = tenthbit::bench::mesh::catchup(2_000)
        .await
        .expect("catchup");
    assert!(catchup.seconds > 0.0, "{catchup:?}");
}

/// `tenthbit bench --spread`: receivers on every node of a line (so half
/// the traffic crosses two links), senders on the first; every message
/// arrives once (small sizes: this checks the tool, it measures nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_benchmark_spreads_receivers_over_the_nodes() {
    // One client certificate for the whole server, as an operator would
    // give its nodes, so one pin reaches every node.
    let first = std::sync::Mutex::new(None);
    let c = Cluster::start_with(3, LINE3, |_, cfg| {
        let mut f = first.lock().unwrap();
        match &*f {
            None => *f = Some((cfg.tls.cert_file.clone(), cfg.tls.key_file.clone())),
            Some((crt, key)) => {
                cfg.tls.cert_file = crt.clone();
                cfg.tls.key_file = key.clone();
            }
        }
        cfg.limits.packets_per_second = 1_000_000;
        cfg.limits.packet_burst = 1_000_000;
        cfg.auth.max_failures_per_ip = 1_000_000;
    })
    .await;
    let s = c.nodes[0].server();
    let t = tenthbit::bench::Target {
        addr: s.addr.to_string(),
        options: s.options(vec![tenthbit::tls::Alpn::Plain]),
        server_pid: Some(std::process::id()),
        spread: vec![
            c.nodes[1].server().addr.to_string(),
            c.nodes[2].server().addr.to_string(),
        ],
        spread_pids: Vec::new(),
    };
    let load = tenthbit::bench::Load {
        messages: 50,
        size: 100,
        rate: None,
        history: false,
        batch_bytes: 0,
    };
    let duplicated = |r: &tenthbit::bench::Report| {
        r.notes
            .iter()
            .find(|(k, _)| k == "duplicated")
            .map(|(_, v)| v.clone())
    };
    let r = tenthbit::bench::fanout(&t, 6, 1, load).await.unwrap();
    assert_eq!((r.expected, r.deliveries, r.lost), (300, 300, 0), "{r}");
    assert_eq!(duplicated(&r).as_deref(), Some("0"), "{r}");
    let r = tenthbit::bench::pairs(&t, 3, load, false).await.unwrap();
    assert_eq!((r.expected, r.deliveries, r.lost), (150, 150, 0), "{r}");
    assert_eq!(duplicated(&r).as_deref(), Some("0"), "{r}");
}

/// Relayed packets one connection received, by sender, as `data` values.
type Got = std::collections::BTreeMap<String, Vec<serde_json::Value>>;

/// Reads `send` packets until `expected` arrived; the rest must be in order.
async fn collect(c: &mut Client, expected: usize) -> Got {
    let mut got = Got::new();
    let mut n = 0;
    while n < expected {
        let p = c
            .recv_timeout(WAIT)
            .await
            .unwrap_or_else(|e| panic!("after {n} of {expected}: {e}"));
        if p.op == "send" {
            got.entry(p.from.clone().unwrap())
                .or_default()
                .push(p.ex["data"].clone());
            n += 1;
        }
    }
    assert_alive(c).await;
    got
}

/// Topics without history: members on every node, the same user on two
/// nodes, random senders; every connection gets every other connection's
/// messages once, in each sender's order.
async fn ephemeral_over(n: usize, edges: &[(usize, usize)], per_sender: usize) {
    // Hundreds of sends per connection: above the default packet burst.
    let c = Cluster::start_with(n, edges, |_, cfg| {
        cfg.limits.packets_per_second = 100_000;
        cfg.limits.packet_burst = 100_000;
    })
    .await;
    let all: Vec<usize> = (0..n).collect();
    for i in 0..n {
        c.nodes[0].server().register(&format!("u{i}"), PW).await;
    }
    let mut owner = c.nodes[0].server().login("u0", PW).await;
    let p = request(
        &mut owner,
        Packet::request("create")
            .with("name", "chat")
            .with("history", false),
    )
    .await;
    let topic = p.topic.clone().unwrap();
    c.converged(&all).await;
    // u{i} on node i; u0 a second time on the last node.
    let mut conns = Vec::new();
    for i in 0..n {
        let mut u = c.nodes[i].server().login(&format!("u{i}"), PW).await;
        assert_eq!(request(&mut u, on("join", &topic)).await.op, "meta");
        conns.push((format!("u{i}"), u));
    }
    c.converged(&all).await;
    let mut twin = c.nodes[n - 1].server().login("u0", PW).await;
    expect_op(&mut twin, "meta").await;
    drop(owner);
    // Everyone sends at once; each waits for its own acks.
    let sends = conns.iter_mut().map(|(name, u)| {
        let topic = topic.clone();
        let name = name.clone();
        async move {
            for k in 0..per_sender {
                let ack = request(u, on("send", &topic).with("data", format!("{name}:{k}"))).await;
                assert_eq!(ack.op, "ack", "{ack:?}");
            }
        }
    });
    futures_join(sends).await;
    let want = |sender: &str| -> Vec<serde_json::Value> {
        (0..per_sender)
            .map(|k| json!(format!("{sender}:{k}")))
            .collect()
    };
    for (name, u) in conns.iter_mut() {
        let got = collect(u, (n - 1) * per_sender).await;
        assert_eq!(got.len(), n - 1, "{name}: {:?}", got.keys());
        for (sender, data) in &got {
            assert_ne!(sender, name);
            assert_eq!(data, &want(sender), "{name} from {sender}");
        }
    }
    // The twin gets everything, its own other connection's messages too.
    let got = collect(&mut twin, n * per_sender).await;
    for (sender, data) in &got {
        assert_eq!(data, &want(sender), "twin from {sender}");
    }
    let s = c.statuses(&all).await;
    assert!(
        s.iter().all(|s| s.relay_dropped == 0),
        "{:?}",
        s.iter().map(|s| s.relay_dropped).collect::<Vec<_>>()
    );
}

/// Runs futures at once (tokio::join! for a list).
async fn futures_join<F: std::future::Future<Output = ()>>(fs: impl Iterator<Item = F>) {
    let mut set = Vec::new();
    for f in fs {
        set.push(f);
    }
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = set.into_iter().map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        pinned.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if pinned.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}

// About 1,000 messages in each shape, every sender at once.
#[tokio::test]
async fn ephemeral_messages_over_a_line() {
    ephemeral_over(3, LINE3, 334).await;
}

#[tokio::test]
async fn ephemeral_messages_over_a_ring() {
    ephemeral_over(5, RING5, 200).await;
}

#[tokio::test]
async fn ephemeral_messages_over_a_barbell() {
    ephemeral_over(6, BARBELL, 167).await;
}

/// Kept messages stream round a ring while one of its links is cut and
/// restored: the member on the far side of the cut gets every message
/// once, in order.
#[tokio::test]
async fn cutting_a_ring_link_mid_stream_loses_and_duplicates_nothing() {
    let c = Cluster::start(5, RING5).await;
    c.nodes[0].server().register("dan", PW).await;
    c.nodes[0].server().register("bob", PW).await;
    let mut dan = c.nodes[0].server().login("dan", PW).await;
    let topic = create(&mut dan, "hall").await;
    let mut quiet = c.nodes[0].server().login("dan", PW).await;
    let p = request(
        &mut quiet,
        Packet::request("create")
            .with("name", "quiet")
            .with("history", false),
    )
    .await;
    let quiet_topic = p.topic.clone().unwrap();
    c.converged(&[0, 1, 2, 3, 4]).await;
    let mut bob = c.nodes[1].server().login("bob", PW).await;
    assert_eq!(request(&mut bob, on("join", &topic)).await.op, "meta");
    assert_eq!(request(&mut bob, on("join", &quiet_topic)).await.op, "meta");
    c.converged(&[0, 1, 2, 3, 4]).await;
    for n in 0..150 {
        if n == 50 {
            c.cut(0, 1);
        }
        if n == 100 {
            c.restore(0, 1);
        }
        let ack = request(&mut dan, on("send", &topic).with("data", n)).await;
        assert_eq!(ack.op, "ack");
        let ack = request(&mut quiet, on("send", &quiet_topic).with("data", n)).await;
        assert_eq!(ack.op, "ack");
    }
    let mut by_topic: std::collections::BTreeMap<String, Vec<serde_json::Value>> =
        Default::default();
    let mut n = 0;
    while n < 300 {
        let p = bob
            .recv_timeout(WAIT)
            .await
            .unwrap_or_else(|e| panic!("after {n}: {e}"));
        if p.op == "send" {
            by_topic
                .entry(p.topic.clone().unwrap())
                .or_default()
                .push(p.ex["data"].clone());
            n += 1;
        }
    }
    assert_alive(&mut bob).await;
    let want: Vec<serde_json::Value> = (0..150).map(|n| json!(n)).collect();
    assert_eq!(by_topic[&topic], want, "kept messages");
    assert_eq!(by_topic[&quiet_topic], want, "messages without history");
    c.converged(&[0, 1, 2, 3, 4]).await;
    let mut bob2 = c.nodes[1].server().login("bob", PW).await;
    assert_eq!(history_data(&mut bob2, &topic).await, want);
}

/// A barbell with its bridge cut: each half goes on talking (with and
/// without history); healed, the kept messages of both halves are on
/// every node.
#[tokio::test]
async fn a_barbell_cut_at_its_bridge_keeps_both_halves_talking() {
    let c = Cluster::start(6, BARBELL).await;
    for name in ["west", "west2", "east", "east2"] {
        c.nodes[0].server().register(name, PW).await;
    }
    let mut owner = c.nodes[0].server().login("west", PW).await;
    let kept = create(&mut owner, "kept").await;
    let p = request(
        &mut owner,
        Packet::request("create")
            .with("name", "live")
            .with("history", false),
    )
    .await;
    let live = p.topic.clone().unwrap();
    let all = [0, 1, 2, 3, 4, 5];
    c.converged(&all).await;
    // Two members on each side, on different nodes of their triangle.
    let mut conns = Vec::new();
    for (name, node) in [("west", 1), ("west2", 2), ("east", 4), ("east2", 5)] {
        let mut u = c.nodes[node].server().login(name, PW).await;
        if name != "west" {
            // west created both topics; others join them.
            assert_eq!(request(&mut u, on("join", &kept)).await.op, "meta");
            assert_eq!(request(&mut u, on("join", &live)).await.op, "meta");
        } else {
            expect_op(&mut u, "meta").await;
            expect_op(&mut u, "meta").await;
        }
        conns.push(u);
    }
    c.converged(&all).await;
    c.cut(2, 3);
    c.links_up(2, &[0, 1]).await;
    c.links_up(3, &[4, 5]).await;
    // Each side talks within itself.
    for (from, to) in [(0, 1), (2, 3)] {
        for n in 0..20 {
            for topic in [&kept, &live] {
                let ack = request(&mut conns[from], on("send", topic).with("data", n)).await;
                assert_eq!(ack.op, "ack");
            }
        }
        let mut got = Vec::new();
        while got.len() < 40 {
            let Ok(p) = conns[to].recv_timeout(WAIT).await else {
                let st = c.statuses(&all).await;
                panic!("conn {to} got only {got:?}; statuses: {st:#?}");
            };
            if p.op == "send" {
                got.push((p.topic.clone(), p.ex.clone()));
            }
        }
    }
    c.restore(2, 3);
    c.converged(&all).await;
    for node in all {
        let mut u = c.nodes[node].server().login("west2", PW).await;
        let data = history_data(&mut u, &kept).await;
        assert_eq!(data.len(), 40, "node {node}: {data:?}");
    }
}

/// A peer that stops reading: the node's own members are not held up, the
/// link is dropped when it goes silent, and once the peer reads again it
/// gets every kept message it missed; of messages without history it may
/// miss some (counted), never get one twice or out of order.
#[tokio::test]
async fn a_peer_that_stops_reading_catches_up_on_kept_messages() {
    let c = Cluster::start(2, &[(0, 1)]).await;
    for name in ["dan", "amy", "bob"] {
        c.nodes[0].server().register(name, PW).await;
    }
    let mut dan = c.nodes[0].server().login("dan", PW).await;
    let kept = create(&mut dan, "kept").await;
    let p = request(
        &mut dan,
        Packet::request("create")
            .with("name", "live")
            .with("history", false),
    )
    .await;
    let live = p.topic.clone().unwrap();
    let mut amy = c.nodes[0].server().login("amy", PW).await;
    c.converged(&[0, 1]).await;
    let mut bob = c.nodes[1].server().login("bob", PW).await;
    for t in [&kept, &live] {
        assert_eq!(request(&mut amy, on("join", t)).await.op, "meta");
        assert_eq!(request(&mut bob, on("join", t)).await.op, "meta");
    }
    c.converged(&[0, 1]).await;
    c.hold(0, 1);
    // Node 0's own members get every message at once meanwhile.
    for n in 0..100 {
        for t in [&kept, &live] {
            assert_eq!(
                request(&mut dan, on("send", t).with("data", n)).await.op,
                "ack"
            );
        }
    }
    let mut local = 0;
    while local < 200 {
        if amy.recv_timeout(WAIT).await.expect("local delivery").op == "send" {
            local += 1;
        }
    }
    c.links_up(0, &[]).await;
    c.restore(0, 1);
    c.converged(&[0, 1]).await;
    let mut kept_got = Vec::new();
    let mut live_got = Vec::new();
    while kept_got.len() < 100 {
        let p = bob
            .recv_timeout(WAIT)
            .await
            .expect("kept messages after the hold");
        if p.op != "send" {
            continue;
        }
        if p.topic.as_deref() == Some(kept.as_str()) {
            kept_got.push(p.ex["data"].as_u64().unwrap());
        } else {
            live_got.push(p.ex["data"].as_u64().unwrap());
        }
    }
    // Whatever else came before a ping's answer.
    let ping = Packet::request("ping").with_id("last");
    bob.send(&ping).await.unwrap();
    loop {
        let p = bob.recv_timeout(WAIT).await.expect("the pong");
        if p.ex_str("for") == Some("last") {
            break;
        }
        if p.op == "send" && p.topic.as_deref() == Some(live.as_str()) {
            live_got.push(p.ex["data"].as_u64().unwrap());
        }
    }
    assert_eq!(kept_got, (0..100).collect::<Vec<_>>());
    assert!(
        live_got.windows(2).all(|w| w[0] < w[1]),
        "in order, once: {live_got:?}"
    );
}

/// The next packet with `op`, skipping others (relays, other events).
async fn next_op(c: &mut Client, op: &str) -> Packet {
    loop {
        let p = c
            .recv_timeout(WAIT)
            .await
            .unwrap_or_else(|e| panic!("waiting for {op}: {e}"));
        if p.op == op {
            return p;
        }
    }
}

/// Members on other nodes are told of joins, leaves, metadata and ACL
/// changes and deletion as members on the node where they happened are.
#[tokio::test]
async fn topic_events_reach_members_on_other_nodes() {
    let c = Cluster::start(3, LINE3).await;
    for name in ["dan", "amy", "bob"] {
        c.nodes[0].server().register(name, PW).await;
    }
    let mut dan = c.nodes[0].server().login("dan", PW).await;
    let topic = create(&mut dan, "hall").await;
    c.converged(&[0, 1, 2]).await;
    let mut amy = c.nodes[2].server().login("amy", PW).await;
    assert_eq!(request(&mut amy, on("join", &topic)).await.op, "meta");
    let j = next_op(&mut dan, "join").await;
    assert_eq!(j.from.as_deref(), Some("amy"));
    let mut bob = c.nodes[1].server().login("bob", PW).await;
    assert_eq!(request(&mut bob, on("join", &topic)).await.op, "meta");
    for member in [&mut dan, &mut amy] {
        let j = next_op(member, "join").await;
        assert_eq!(j.from.as_deref(), Some("bob"));
        assert_eq!(j.topic.as_deref(), Some(topic.as_str()));
    }
    let ack = request(&mut dan, on("meta", &topic).with("description", "the hall")).await;
    assert_eq!(ack.op, "ack");
    let m = next_op(&mut amy, "meta").await;
    assert_eq!(m.ex_str("description"), Some("the hall"));
    assert_eq!(m.from.as_deref(), Some("@mesh.test"));
    let ack = request(
        &mut dan,
        on("acl", &topic)
            .with("subject", "bob")
            .with("grant", json!(["op"])),
    )
    .await;
    assert_eq!(ack.op, "ack");
    let a = next_op(&mut amy, "acl").await;
    assert!(a.ex["acl"].to_string().contains("\"bob\""), "{a:?}");
    assert_eq!(request(&mut bob, on("leave", &topic)).await.op, "ack");
    for member in [&mut dan, &mut amy] {
        let l = next_op(member, "leave").await;
        assert_eq!(l.from.as_deref(), Some("bob"));
    }
    assert_eq!(request(&mut dan, on("delete", &topic)).await.op, "ack");
    let d = next_op(&mut amy, "delete").await;
    assert_eq!(d.topic.as_deref(), Some(topic.as_str()));
}

/// A link still in its TLS handshake does not hold a node's shutdown up.
#[tokio::test]
async fn shutdown_drops_links_still_in_their_handshake() {
    let mut c = Cluster::start_with(1, &[], |_, cfg| {
        cfg.mesh.handshake_timeout_ms = 600_000;
        cfg.limits.shutdown_grace_ms = 100;
    })
    .await;
    let addr = c.nodes[0].mesh_addr;
    let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Accepted in order: once a later connection's bad handshake is
    // refused, the silent one is the node's.
    let mut junk = tokio::net::TcpStream::connect(addr).await.unwrap();
    junk.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut junk, &mut buf))
        .await
        .expect("a bad handshake is refused");
    tokio::time::timeout(WAIT, c.stop(0))
        .await
        .expect("shutdown does not wait for a handshake that never comes");
}

/// Two accounts that claimed one name on the two sides of a partition:
/// after the merge the later claim is shown as `name~<hex>`, so its
/// sessions, which speak by the name, end with `account/renamed`; the
/// earlier claim's go on.
#[tokio::test]
async fn a_merge_ends_the_sessions_of_a_names_later_claim() {
    let c = Cluster::start(2, &[(0, 1)]).await;
    c.converged(&[0, 1]).await;
    c.cut(0, 1);
    c.nodes[0].server().register("dan", "password-zero").await;
    c.nodes[1].server().register("dan", "password-one").await;
    let mut zero = c.nodes[0].server().login("dan", "password-zero").await;
    let mut one = c.nodes[1].server().login("dan", "password-one").await;
    c.restore(0, 1);
    c.converged(&[0, 1]).await;
    let (bye, kept) = tokio::select! {
        p = zero.recv_timeout(WAIT) => (p.expect("bye"), &mut one),
        p = one.recv_timeout(WAIT) => (p.expect("bye"), &mut zero),
    };
    assert_eq!(bye.op, "bye", "{bye:?}");
    assert_eq!(bye.ex_str("code"), Some("account/renamed"), "{bye:?}");
    let who = request(kept, Packet::request("whoami")).await;
    assert_eq!(who.ex_str("account"), Some("dan"), "{who:?}");
}
