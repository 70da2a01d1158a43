//! The mesh (DESIGN.md §8): nodes of one server in this process, every link
//! through a proxy that cuts, holds and restores it. Replication over every
//! shape, restarts, wiped stores, partitions that heal to one state, link
//! rules, tickets across nodes.

#[path = "common/mesh.rs"]
mod cluster;
mod common;

use cluster::Cluster;
use common::*;
use serde_json::json;
use tenthbit::client::Client;
use tenthbit::proto::Packet;

const PW: &str = "hellosecret";

fn on(op: &str, topic: &str) -> Packet {
    let mut p = Packet::request(op);
    p.topic = Some(topic.to_owned());
    p
}

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
    let c = Cluster::start(3, LINE3).await;
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
    for n in 0..50 {
        let ack = request(&mut dan, on("send", &topic).with("data", n)).await;
        assert_eq!(ack.op, "ack", "{ack:?}");
    }
    for n in 0..50 {
        let far = expect_op(&mut bob_far, "send").await;
        let near = expect_op(&mut bob_near, "send").await;
        assert_eq!(far.ex.get("data"), Some(&json!(n)));
        assert_eq!(far, near, "the relay is the same on every node");
        assert_eq!(far.from.as_deref(), Some("dan"));
    }
}
