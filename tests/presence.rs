//! Presence (protocol.md §11.23): who of one's topic companions is online,
//! on one server and across the nodes of a mesh, where a node that falls
//! silent has its users shown offline (not removed from their topics) and
//! online again when it is heard again.

#[path = "common/mesh.rs"]
mod cluster;
mod common;

use cluster::Cluster;
use common::*;
use serde_json::{Value, json};
use tenthbit::client::Client;
use tenthbit::proto::Packet;

const PW: &str = "hellosecret";
const TRIANGLE: &[(usize, usize)] = &[(0, 1), (1, 2), (2, 0)];

fn names(p: &Packet, key: &str) -> Vec<String> {
    p.ex.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The next `presence` event; every other packet on the way must be a
/// `send` (never a `join` or `leave`).
async fn next_presence(c: &mut Client) -> Packet {
    loop {
        let p = c.recv_timeout(WAIT).await.expect("a presence event");
        match p.op.as_str() {
            "presence" => return p,
            "send" => {}
            other => panic!("unexpected {other}: {p:?}"),
        }
    }
}

/// The next `presence` event that says someone went offline (`want`
/// false) or came online; events before it may only repeat that `known`
/// accounts are online (news the watcher's first answer already had).
async fn next_change(c: &mut Client, known: &[&str]) -> Packet {
    loop {
        let p = next_presence(c).await;
        let stale = names(&p, "offline").is_empty()
            && names(&p, "online")
                .iter()
                .all(|n| known.contains(&n.as_str()));
        if !stale {
            return p;
        }
    }
}

/// Pings and reads up to the `pong`: no `presence` event may be queued
/// before it. Sound only after an announcement that would have included
/// this connection was seen elsewhere: a current-thread runtime queues an
/// announcement for every watcher before any client reads.
async fn no_presence_queued(c: &mut Client) {
    c.send(&Packet::request("ping").with_id("quiet"))
        .await
        .expect("ping");
    loop {
        let p = c.recv_timeout(WAIT).await.expect("the pong");
        assert_ne!(p.op, "presence", "{p:?}");
        if p.op == "pong" {
            return;
        }
    }
}

/// Asks `presence` until `want` (sorted) is the online list, or fails.
async fn online_becomes(c: &mut Client, want: &[&str]) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let p = request(c, Packet::request("presence")).await;
        assert_eq!(p.op, "presence", "{p:?}");
        if names(&p, "online") == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "online: {p:?}, want {want:?}"
        );
        // Polling a condition that travels the mesh.
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// One server: the answer lists online companions; events tell who came
/// and went, once per account (a second device says nothing), only to
/// connections that watch, and never about strangers.
#[tokio::test]
async fn presence_on_one_server() {
    let s = TestServer::start().await;
    for n in ["amy", "bob", "cat"] {
        s.register(n, PW).await;
    }
    let mut amy = s.login("amy", PW).await;
    let p = request(&mut amy, Packet::request("create").with("name", "room")).await;
    let room = p.topic.clone().unwrap();
    let mut bob = s.login("bob", PW).await;
    assert_eq!(request(&mut bob, on("join", &room)).await.op, "meta");
    expect_op(&mut amy, "join").await;
    let p = request(&mut amy, Packet::request("presence").with_id("p1")).await;
    assert_eq!(
        (p.op.as_str(), names(&p, "online")),
        ("presence", vec!["bob".to_owned()])
    );
    assert_eq!(p.ex["for"], json!("p1"));
    // A watcher that is not in the topic hears nothing of it.
    let mut cat = s.login("cat", PW).await;
    assert_eq!(
        request(&mut cat, Packet::request("presence")).await.op,
        "presence"
    );
    // bob with two devices goes offline when both are gone.
    let bob2 = s.login("bob", PW).await;
    bob.close(WAIT).await;
    bob2.close(WAIT).await;
    let p = next_change(&mut amy, &["bob"]).await;
    assert_eq!(
        (names(&p, "offline"), names(&p, "online")),
        (vec!["bob".to_owned()], vec![])
    );
    let bob = s.login("bob", PW).await;
    let p = next_presence(&mut amy).await;
    assert_eq!(names(&p, "online"), vec!["bob".to_owned()]);
    // That announcement was for amy only: cat shares no topic with bob.
    no_presence_queued(&mut cat).await;
    // Stopped watching: no more events. cat, now in the topic and still
    // watching, shows when bob's going is announced.
    assert_eq!(request(&mut cat, on("join", &room)).await.op, "meta");
    let p = request(&mut amy, Packet::request("presence").with("watch", false)).await;
    assert_eq!(p.op, "ack");
    bob.close(WAIT).await;
    let p = next_presence(&mut cat).await;
    assert_eq!(names(&p, "offline"), vec!["bob".to_owned()], "{p:?}");
    no_presence_queued(&mut amy).await;
    let p = request(&mut amy, Packet::request("presence").with("watch", "yes")).await;
    assert_eq!(p.ex["code"], json!("request/invalid"), "{p:?}");
}

/// Three nodes; amy on node 0 watches. dave's node is cut off from the
/// others: after the presence timeout amy is told dave is offline (one
/// event; dave stays a member, no `leave`), and when the links come back,
/// online again (no `join`). bob, on nodes 1 and 2 at once, stays online
/// throughout, and goes offline only when his last device does.
#[tokio::test]
async fn a_silent_node_shows_its_users_offline_and_back_without_leaves_or_joins() {
    let c = Cluster::start(3, TRIANGLE).await;
    for n in ["amy", "bob", "dave"] {
        c.nodes[0].server().register(n, PW).await;
    }
    let mut amy = c.nodes[0].server().login("amy", PW).await;
    let p = request(&mut amy, Packet::request("create").with("name", "room")).await;
    let room = p.topic.clone().unwrap();
    c.converged(&[0, 1, 2]).await;
    let mut bob = c.nodes[1].server().login("bob", PW).await;
    assert_eq!(request(&mut bob, on("join", &room)).await.op, "meta");
    // bob's join is on node 2 before his second device logs in there.
    c.converged(&[0, 1, 2]).await;
    let mut bob2 = c.nodes[2].server().login("bob", PW).await;
    expect_op(&mut bob2, "meta").await;
    let mut dave = c.nodes[2].server().login("dave", PW).await;
    assert_eq!(request(&mut dave, on("join", &room)).await.op, "meta");
    c.converged(&[0, 1, 2]).await;
    // The joins were announced to amy; from here on she watches.
    for _ in 0..2 {
        expect_op(&mut amy, "join").await;
    }
    online_becomes(&mut amy, &["bob", "dave"]).await;

    c.cut(0, 2);
    c.cut(1, 2);
    let p = next_change(&mut amy, &["bob", "dave"]).await;
    assert_eq!(
        (names(&p, "offline"), names(&p, "online")),
        (vec!["dave".to_owned()], vec![]),
        "bob is still on node 1: {p:?}"
    );
    let status = c.nodes[0].status().await;
    let silent: Vec<_> = status
        .presence
        .iter()
        .filter(|o| !o.live)
        .map(|o| o.node.clone())
        .collect();
    assert_eq!(
        silent,
        vec![c.nodes[2].name.clone()],
        "{:?}",
        status.presence
    );
    // dave is still a member.
    let meta = request(&mut amy, on("meta", &room)).await;
    assert!(
        names(&meta, "members").contains(&"dave".to_owned()),
        "{meta:?}"
    );
    // Meanwhile dave talks on his side; it reaches amy when the links heal.
    assert_eq!(
        request(&mut dave, on("send", &room).with("data", "hi"))
            .await
            .op,
        "ack"
    );

    c.restore(0, 2);
    c.restore(1, 2);
    let p = next_presence(&mut amy).await;
    assert_eq!(
        (names(&p, "online"), names(&p, "offline")),
        (vec!["dave".to_owned()], vec![])
    );
    online_becomes(&mut amy, &["bob", "dave"]).await;

    // bob leaves node 2 (the node stops): still online on node 1.
    bob2.close(WAIT).await;
    dave.close(WAIT).await;
    let mut c = c;
    c.stop(2).await;
    let p = next_presence(&mut amy).await;
    assert_eq!(names(&p, "offline"), vec!["dave".to_owned()], "{p:?}");
    online_becomes(&mut amy, &["bob"]).await;
    bob.close(WAIT).await;
    let p = next_presence(&mut amy).await;
    assert_eq!(names(&p, "offline"), vec!["bob".to_owned()], "{p:?}");
}
