//! Read markers: set from one connection, pushed to the account's others,
//! only moving forward, reported with the unread count at login and after
//! a restart; the read ACL, unknown messages and the limits.

mod common;

use common::*;
use serde_json::{Value, json};
use tenthbit::client::Client;
use tenthbit::proto::Packet;

/// `bob` says `n` things in `topic`; their ids and times.
async fn chatter(bob: &mut Client, topic: &str, n: usize) -> Vec<(String, i64)> {
    let mut sent = Vec::new();
    for i in 0..n {
        let ack = request(bob, on("send", topic).with("body", format!("line {i}"))).await;
        assert_eq!(ack.op, "ack", "{ack:?}");
        sent.push((
            ack.ex_str("id").unwrap().to_owned(),
            ack.ex.get("ts").and_then(Value::as_i64).unwrap(),
        ));
    }
    sent
}

/// dan (owner of `lobby`, where bob is a member too).
async fn setup(server: &TestServer) -> (Client, Client, String) {
    server.register("dan", "hellosecret").await;
    server.register("bob", "hellosecret").await;
    let mut dan = server.login("dan", "hellosecret").await;
    let mut bob = server.login("bob", "hellosecret").await;
    let p = request(&mut dan, Packet::request("create").with("name", "lobby")).await;
    let topic = p.topic.unwrap();
    assert_eq!(request(&mut bob, on("join", &topic)).await.op, "meta");
    (dan, bob, topic)
}

/// Logs in `name`, who is a member of one topic: returns the client and
/// that topic's `meta` from the login sequence.
async fn login_with_topic(server: &TestServer, name: &str) -> (Client, Packet) {
    let mut c = server.client().await;
    let ack = request(&mut c, password_auth(name, "hellosecret")).await;
    assert_eq!(ack.op, "ack");
    expect_op(&mut c, "meta").await;
    expect_op(&mut c, "meta").await;
    let meta = expect_op(&mut c, "meta").await;
    (c, meta)
}

#[tokio::test]
async fn a_marker_reaches_the_other_devices_and_only_moves_forward() {
    let server = TestServer::start().await;
    let (mut dan, mut bob, topic) = setup(&server).await;
    expect_op(&mut dan, "join").await;
    let mut phone = server.login("dan", "hellosecret").await;
    expect_op(&mut phone, "meta").await;
    let sent = chatter(&mut bob, &topic, 5).await;
    // The relays reach both of dan's connections; the marker comes after.
    for _ in 0..5 {
        expect_op(&mut dan, "send").await;
        expect_op(&mut phone, "send").await;
    }

    let ack = request(&mut dan, on("mark", &topic).with("id", sent[2].0.as_str())).await;
    assert_eq!(ack.op, "ack", "{ack:?}");
    assert_eq!(ack.ex["read"], json!({"id": sent[2].0, "ts": sent[2].1}));
    assert_eq!(ack.ex["unread"], 2);
    assert!(ack.ex.get("unread_more").is_none());
    let pushed = expect_op(&mut phone, "mark").await;
    assert_eq!(pushed.topic.as_deref(), Some(topic.as_str()));
    assert_eq!(pushed.from.as_deref(), Some("dan"));
    assert_eq!(pushed.ex["read"], ack.ex["read"]);
    assert_eq!(pushed.ex["unread"], 2);
    assert!(pushed.ex_str("for").is_none());

    // An older message does not take the marker back, and nobody is told.
    let stale = request(
        &mut phone,
        on("mark", &topic).with("id", sent[0].0.as_str()),
    )
    .await;
    assert_eq!(stale.op, "ack");
    assert_eq!(stale.ex["read"]["id"], sent[2].0.as_str());
    let ack = request(
        &mut phone,
        on("mark", &topic).with("id", sent[4].0.as_str()),
    )
    .await;
    assert_eq!(ack.ex["unread"], 0);
    let pushed = expect_op(&mut dan, "mark").await;
    assert_eq!(pushed.ex["read"]["id"], sent[4].0.as_str());

    // Reading it back, from either device.
    let read = request(&mut dan, on("mark", "lobby")).await;
    assert_eq!(read.op, "mark");
    assert_eq!(read.topic.as_deref(), Some(topic.as_str()));
    assert_eq!(read.ex["read"]["id"], sent[4].0.as_str());
    assert_eq!(read.ex["unread"], 0);
    // Bob never set one, and his own messages are not unread to him.
    let bobs = request(&mut bob, on("mark", &topic)).await;
    assert!(bobs.ex.get("read").is_none(), "{bobs:?}");
    assert_eq!(bobs.ex["unread"], 0);
    server.stop().await;
}

#[tokio::test]
async fn login_reports_markers_and_unread_counts_across_a_restart() {
    let server = TestServer::start_with(|c| c.history.max_unread = 3).await;
    let (mut dan, mut bob, topic) = setup(&server).await;
    let sent = chatter(&mut bob, &topic, 6).await;
    let ack = request(&mut dan, on("mark", &topic).with("id", sent[1].0.as_str())).await;
    assert_eq!(ack.ex["unread"], 3);
    assert_eq!(ack.ex["unread_more"], true);
    let ack = request(&mut dan, on("mark", &topic).with("id", sent[3].0.as_str())).await;
    assert_eq!(ack.ex["unread"], 2);
    drop((dan, bob));

    let server = server.restart(|c| c.history.max_unread = 3).await;
    let (_dan, meta) = login_with_topic(&server, "dan").await;
    assert_eq!(meta.topic.as_deref(), Some(topic.as_str()));
    assert_eq!(meta.ex["read"], json!({"id": sent[3].0, "ts": sent[3].1}));
    assert_eq!(meta.ex["unread"], 2);
    assert!(meta.ex.get("unread_more").is_none());
    // Bob has no marker: six messages, all his own, none unread.
    let (_bob, meta) = login_with_topic(&server, "bob").await;
    assert!(meta.ex.get("read").is_none());
    assert_eq!(meta.ex["unread"], 0);
    server.stop().await;
}

#[tokio::test]
async fn marking_needs_read_and_a_kept_message() {
    let server = TestServer::start().await;
    let (mut dan, mut bob, topic) = setup(&server).await;
    let sent = chatter(&mut bob, &topic, 1).await;
    server.register("eve", "hellosecret").await;
    let mut eve = server.login("eve", "hellosecret").await;
    let ack = request(
        &mut dan,
        on("acl", &topic)
            .with("subject", "eve")
            .with("grant", json!(["ban"])),
    )
    .await;
    assert_eq!(ack.op, "ack");
    let p = request(&mut eve, on("mark", &topic).with("id", sent[0].0.as_str())).await;
    assert_eq!(p.ex_str("code"), Some("acl/denied"), "{p:?}");
    let p = request(&mut eve, on("mark", &topic)).await;
    assert_eq!(p.ex_str("code"), Some("acl/denied"), "{p:?}");

    let p = request(&mut dan, on("mark", &topic).with("id", "no-such-message")).await;
    assert_eq!(p.ex_str("code"), Some("message/not-found"), "{p:?}");
    let p = request(&mut dan, on("mark", &topic).with("id", "x".repeat(129))).await;
    assert_eq!(p.ex_str("code"), Some("request/invalid"), "{p:?}");
    let p = request(
        &mut dan,
        Packet::request("mark").with("id", sent[0].0.as_str()),
    )
    .await;
    assert_eq!(p.ex_str("code"), Some("request/invalid"), "{p:?}");

    // A topic that keeps nothing has nothing to mark.
    let p = request(
        &mut dan,
        Packet::request("create")
            .with("name", "ephemeral")
            .with("history", false),
    )
    .await;
    let quiet = p.topic.unwrap();
    let ack = request(&mut dan, on("send", &quiet).with("body", "gone")).await;
    let gone = ack.ex_str("id").unwrap().to_owned();
    let p = request(&mut dan, on("mark", &quiet).with("id", gone.as_str())).await;
    assert_eq!(p.ex_str("code"), Some("message/not-found"), "{p:?}");

    let mut anon = server.client().await;
    let p = request(&mut anon, on("mark", &topic)).await;
    assert_eq!(p.ex_str("code"), Some("auth/required"), "{p:?}");
    server.stop().await;
}

#[tokio::test]
async fn marks_are_rate_limited_like_any_packet() {
    let server = TestServer::start_with(|c| {
        c.limits.packets_per_second = 1;
        c.limits.packet_burst = 4;
    })
    .await;
    let (mut dan, mut bob, topic) = setup(&server).await;
    let sent = chatter(&mut bob, &topic, 1).await;
    drop(dan);
    dan = server.login("dan", "hellosecret").await;
    expect_op(&mut dan, "meta").await;
    let mut batch = String::new();
    for i in 0..5 {
        batch.push_str(&format!(
            "{{\"id\":\"m{i}\",\"op\":\"mark\",\"topic\":\"{topic}\",\"ex\":{{\"id\":\"{}\"}}}}\n",
            sent[0].0
        ));
    }
    dan.send_raw(batch.as_bytes()).await.unwrap();
    for i in 0..3 {
        let p = expect_op(&mut dan, "ack").await;
        assert_eq!(p.ex_str("for"), Some(format!("m{i}").as_str()));
    }
    for i in 3..5 {
        let p = expect_error(&mut dan, "rate/limited").await;
        assert_eq!(p.ex_str("for"), Some(format!("m{i}").as_str()));
    }
    server.stop().await;
}
