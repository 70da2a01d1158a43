//! Read markers, edits, redactions and the search index are §4a state: made
//! on one node, they are the same on another once the mesh has converged,
//! and the connections there are told as they are on the first node.

#[path = "common/mesh.rs"]
mod cluster;
mod common;

use cluster::Cluster;
use common::*;
use serde_json::{Value, json};
use tenthbit::client::Client;
use tenthbit::proto::Packet;

const PW: &str = "hellosecret";

async fn say(c: &mut Client, topic: &str, body: &str) -> String {
    let ack = request(c, on("send", topic).with("body", body)).await;
    assert_eq!(ack.op, "ack", "{ack:?}");
    ack.ex_str("id").unwrap().to_owned()
}

fn ids(p: &Packet) -> Vec<&str> {
    p.ex["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect()
}

/// Two linked nodes, dan logged in on the first with a topic `lobby`.
async fn two_nodes_and_a_lobby() -> (Cluster, Client, String) {
    let c = Cluster::start(2, &[(0, 1)]).await;
    c.links_up(0, &[1]).await;
    c.links_up(1, &[0]).await;
    c.nodes[0].server().register("dan", PW).await;
    let mut dan = c.nodes[0].server().login("dan", PW).await;
    let p = request(&mut dan, Packet::request("create").with("name", "lobby")).await;
    let topic = p.topic.unwrap();
    (c, dan, topic)
}

#[tokio::test]
async fn markers_edits_redactions_and_search_replicate() {
    let (c, mut dan, topic) = two_nodes_and_a_lobby().await;
    let typo = say(&mut dan, &topic, "helo wrold").await;
    let secret = say(&mut dan, &topic, "hunter2 is my password").await;
    let last = say(&mut dan, &topic, "bye now").await;
    c.converged(&[0, 1]).await;
    // dan on the other node too, watching.
    let mut watch = c.nodes[1].server().login("dan", PW).await;
    expect_op(&mut watch, "meta").await;
    let p = request(
        &mut dan,
        on("edit", &topic)
            .with("id", typo.as_str())
            .with("body", "hello world"),
    )
    .await;
    assert_eq!(p.op, "ack", "{p:?}");
    let p = request(&mut dan, on("redact", &topic).with("id", secret.as_str())).await;
    assert_eq!(p.op, "ack", "{p:?}");
    let p = request(&mut dan, on("mark", &topic).with("id", last.as_str())).await;
    assert_eq!(p.op, "ack", "{p:?}");
    c.converged(&[0, 1]).await;

    // Told live there, as on the node where it happened.
    let p = expect_op(&mut watch, "edit").await;
    assert_eq!(p.from.as_deref(), Some("dan"));
    assert_eq!(p.ex["id"], typo.as_str());
    assert_eq!(p.ex["body"], "hello world");
    let p = expect_op(&mut watch, "redact").await;
    assert_eq!(p.ex["id"], secret.as_str());
    let p = expect_op(&mut watch, "mark").await;
    assert_eq!(p.topic.as_deref(), Some(topic.as_str()));
    assert_eq!(p.ex["read"]["id"], last.as_str());
    assert_eq!(p.ex["unread"], 0);

    // On the other node: the marker at login, the edit and the redaction in
    // history, and the index agreeing with both.
    let mut there = c.nodes[1].server().login("dan", PW).await;
    let meta = expect_op(&mut there, "meta").await;
    assert_eq!(meta.ex["read"]["id"], last.as_str(), "{meta:?}");
    assert_eq!(meta.ex["unread"], 0);
    let history = request(&mut there, on("history", &topic)).await;
    assert_eq!(
        ids(&history),
        [typo.as_str(), secret.as_str(), last.as_str()]
    );
    assert_eq!(history.ex["messages"][0]["ex"]["body"], "hello world");
    assert!(history.ex["messages"][0]["ex"]["edited"].is_i64());
    assert_eq!(history.ex["messages"][1]["ex"], json!({"redacted": true}));
    let found = request(&mut there, Packet::request("search").with("q", "hello")).await;
    assert_eq!(ids(&found), [typo.as_str()]);
    let found = request(&mut there, Packet::request("search").with("q", "hunter2")).await;
    assert_eq!(found.ex["messages"], Value::Array(Vec::new()));
    let found = request(&mut there, Packet::request("search").with("q", "wrold")).await;
    assert_eq!(found.ex["messages"], Value::Array(Vec::new()));
}

/// An edit made on one side of a partition while the message was redacted
/// on the other: after the heal the redaction holds everywhere, and the
/// members on the redacting side are not told the edit's text (it would
/// show again, live, a message they were told is gone). The sides' other
/// changes are still told.
#[tokio::test]
async fn an_edit_that_meets_a_redaction_is_not_told() {
    let (c, mut dan, topic) = two_nodes_and_a_lobby().await;
    let secret = say(&mut dan, &topic, "hunter2 is my password").await;
    c.converged(&[0, 1]).await;
    let mut far = c.nodes[1].server().login("dan", PW).await;
    expect_op(&mut far, "meta").await;
    let mut watch = c.nodes[1].server().login("dan", PW).await;
    expect_op(&mut watch, "meta").await;

    c.cut(0, 1);
    c.links_up(0, &[]).await;
    c.links_up(1, &[]).await;
    let p = request(&mut far, on("redact", &topic).with("id", secret.as_str())).await;
    assert_eq!(p.op, "ack", "{p:?}");
    let p = expect_op(&mut watch, "redact").await;
    assert_eq!(p.ex["id"], secret.as_str());
    let edit = on("edit", &topic)
        .with("id", secret.as_str())
        .with("body", "hunter3 is my new one");
    assert_eq!(request(&mut dan, edit).await.op, "ack");
    let after = say(&mut dan, &topic, "after the edit").await;
    c.restore(0, 1);
    c.converged(&[0, 1]).await;

    // Then a marker, which node 1 gets after all of that (a later batch
    // on the same link) and tells dan's connections there.
    let p = request(&mut dan, on("mark", &topic).with("id", after.as_str())).await;
    assert_eq!(p.op, "ack", "{p:?}");
    c.converged(&[0, 1]).await;

    // What node 1 tells of node 0's side: the message sent after the edit
    // and the marker, and no edit.
    let mut sent = false;
    loop {
        let p = watch
            .recv_timeout(std::time::Duration::from_secs(10))
            .await
            .unwrap();
        assert_ne!(p.op, "edit", "{p:?}");
        sent |= p.op == "send" && p.id.as_deref() == Some(after.as_str());
        if p.op == "mark" {
            break;
        }
    }
    assert!(sent, "the message after the edit is told");
    let history = request(&mut watch, on("history", &topic)).await;
    assert_eq!(history.ex["messages"][0]["ex"], json!({"redacted": true}));
    let found = request(&mut watch, Packet::request("search").with("q", "hunter3")).await;
    assert_eq!(found.ex["messages"], Value::Array(Vec::new()));
}
