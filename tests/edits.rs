//! Edits and redactions of kept messages: live events, what history shows,
//! restarts, the text gone from the store, and the denials.

mod common;

use common::*;
use serde_json::{Value, json};
use tenthbit::client::Client;
use tenthbit::proto::Packet;

/// dan owns `lobby`, bob is a member; returns the topic.
async fn setup(server: &TestServer) -> (Client, Client, String) {
    server.register("dan", "hellosecret").await;
    server.register("bob", "hellosecret").await;
    let mut dan = server.login("dan", "hellosecret").await;
    let mut bob = server.login("bob", "hellosecret").await;
    let p = request(&mut dan, Packet::request("create").with("name", "lobby")).await;
    let topic = p.topic.unwrap();
    assert_eq!(request(&mut bob, on("join", &topic)).await.op, "meta");
    expect_op(&mut dan, "join").await;
    (dan, bob, topic)
}

async fn say(c: &mut Client, topic: &str, body: &str) -> String {
    let ack = request(c, on("send", topic).with("body", body)).await;
    assert_eq!(ack.op, "ack", "{ack:?}");
    ack.ex_str("id").unwrap().to_owned()
}

/// The messages' `ex`, oldest first.
async fn history(c: &mut Client, topic: &str) -> Vec<Value> {
    let p = request(c, on("history", topic)).await;
    assert_eq!(p.op, "history", "{p:?}");
    p.ex["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["ex"].clone())
        .collect()
}

#[tokio::test]
async fn edits_and_redactions_reach_members_and_history_and_survive_a_restart() {
    let server = TestServer::start().await;
    let (mut dan, mut bob, topic) = setup(&server).await;
    let typo = say(&mut dan, &topic, "helo").await;
    let oops = say(&mut dan, &topic, "my password is hunter2").await;
    expect_op(&mut bob, "send").await;
    expect_op(&mut bob, "send").await;

    let ack = request(
        &mut dan,
        on("edit", &topic)
            .with("id", typo.as_str())
            .with("body", "hello"),
    )
    .await;
    assert_eq!(ack.op, "ack", "{ack:?}");
    assert_eq!(ack.ex_str("id"), Some(typo.as_str()));
    let edited = ack.ex["edited"].as_i64().unwrap();
    let event = expect_op(&mut bob, "edit").await;
    assert_eq!(event.from.as_deref(), Some("dan"));
    assert_eq!(event.topic.as_deref(), Some(topic.as_str()));
    assert_eq!(
        Value::Object(event.ex.clone()),
        json!({"id": typo, "body": "hello", "edited": edited})
    );

    let ack = request(&mut dan, on("redact", &topic).with("id", oops.as_str())).await;
    assert_eq!(ack.op, "ack", "{ack:?}");
    let event = expect_op(&mut bob, "redact").await;
    assert_eq!(Value::Object(event.ex.clone()), json!({"id": oops}));

    let expected = vec![
        json!({"body": "hello", "edited": edited}),
        json!({"redacted": true}),
    ];
    assert_eq!(history(&mut bob, &topic).await, expected);
    drop((dan, bob));

    let server = server.restart(|_| {}).await;
    let mut bob = server.login("bob", "hellosecret").await;
    expect_op(&mut bob, "meta").await;
    assert_eq!(history(&mut bob, &topic).await, expected);

    // Nothing of the redacted text is left in the store's log of events,
    // nor in the message log's files, where the message itself is kept.
    let TestServer { handle, dir, .. } = server;
    handle.shutdown().await;
    let data = dir.path().join("data");
    let db = tenthbit::store::Db::open(&data, "node1").unwrap();
    let log = format!("{:?}", db.events().unwrap());
    assert!(!log.contains("hunter2"), "{log}");
    assert!(log.contains("hello"));
    let mut segments = Vec::new();
    for f in std::fs::read_dir(data.join(tenthbit::store::MESSAGE_LOG_DIR)).unwrap() {
        segments.extend(std::fs::read(f.unwrap().path()).unwrap());
    }
    assert!(segments.windows(b"helo".len()).any(|w| w == b"helo"));
    assert!(!segments.windows(b"hunter2".len()).any(|w| w == b"hunter2"));
}

#[tokio::test]
async fn only_the_sender_edits_and_ops_may_redact() {
    let server = TestServer::start().await;
    let (mut dan, mut bob, topic) = setup(&server).await;
    let dans = say(&mut dan, &topic, "mine").await;
    let bobs = say(&mut bob, &topic, "his").await;

    let p = request(
        &mut bob,
        on("edit", &topic)
            .with("id", dans.as_str())
            .with("body", "x"),
    )
    .await;
    assert_eq!(p.ex_str("code"), Some("acl/denied"), "{p:?}");
    // Not even the owner edits another's words.
    let p = request(
        &mut dan,
        on("edit", &topic)
            .with("id", bobs.as_str())
            .with("body", "x"),
    )
    .await;
    assert_eq!(p.ex_str("code"), Some("acl/denied"), "{p:?}");
    let p = request(&mut bob, on("redact", &topic).with("id", dans.as_str())).await;
    assert_eq!(p.ex_str("code"), Some("acl/denied"), "{p:?}");
    // The owner may redact anyone's.
    let p = request(&mut dan, on("redact", &topic).with("id", bobs.as_str())).await;
    assert_eq!(p.op, "ack", "{p:?}");
    // Once redacted, there is nothing to edit or redact.
    let p = request(
        &mut bob,
        on("edit", &topic)
            .with("id", bobs.as_str())
            .with("body", "x"),
    )
    .await;
    assert_eq!(p.ex_str("code"), Some("message/not-found"), "{p:?}");
    let p = request(&mut dan, on("redact", &topic).with("id", bobs.as_str())).await;
    assert_eq!(p.ex_str("code"), Some("message/not-found"), "{p:?}");
    let p = request(&mut dan, on("redact", &topic).with("id", "nope")).await;
    assert_eq!(p.ex_str("code"), Some("message/not-found"), "{p:?}");
    let p = request(&mut dan, on("edit", &topic).with("body", "no id")).await;
    assert_eq!(p.ex_str("code"), Some("request/invalid"), "{p:?}");
    // An edit that would not fit a line as relayed.
    let edit = |body: &str| {
        on("edit", &topic)
            .with_id("big")
            .with("id", dans.as_str())
            .with("body", body)
    };
    // The request itself fits the default 64 KiB line, with 5 bytes spare.
    let room = 65_536 - 5 - (edit("").to_line().len() - 1);
    let p = request(&mut dan, edit(&"x".repeat(room))).await;
    assert_eq!(p.ex_str("code"), Some("packet/too-large"), "{p:?}");
    // A banned sender edits nothing.
    let p = request(
        &mut dan,
        on("acl", &topic)
            .with("subject", "bob")
            .with("grant", json!(["ban"])),
    )
    .await;
    assert_eq!(p.op, "ack");
    let mine = request(&mut bob, on("redact", &topic).with("id", dans.as_str())).await;
    assert_eq!(mine.ex_str("code"), Some("acl/denied"), "{mine:?}");
    server.stop().await;
}

#[tokio::test]
async fn edits_close_with_the_window_and_are_rate_limited() {
    let server = TestServer::start_with(|c| {
        c.history.edit_window_ms = 0;
        c.limits.packets_per_second = 1;
        c.limits.packet_burst = 5;
    })
    .await;
    server.register("dan", "hellosecret").await;
    let mut dan = server.login("dan", "hellosecret").await;
    let p = request(&mut dan, Packet::request("create").with("name", "lobby")).await;
    let topic = p.topic.unwrap();
    let id = say(&mut dan, &topic, "final").await;
    let p = request(
        &mut dan,
        on("edit", &topic).with("id", id.as_str()).with("body", "x"),
    )
    .await;
    assert_eq!(p.ex_str("code"), Some("message/too-old"), "{p:?}");
    // Four packets so far (login, create, send, edit): the burst of five
    // has one token left, then the rate of one a second applies.
    let mut batch = String::new();
    for i in 0..3 {
        batch.push_str(&format!(
            "{{\"id\":\"e{i}\",\"op\":\"redact\",\"topic\":\"{topic}\",\"ex\":{{\"id\":\"nope\"}}}}\n"
        ));
    }
    dan.send_raw(batch.as_bytes()).await.unwrap();
    let first = expect_error(&mut dan, "message/not-found").await;
    assert_eq!(first.ex_str("for"), Some("e0"));
    for i in 1..3 {
        let p = expect_error(&mut dan, "rate/limited").await;
        assert_eq!(p.ex_str("for"), Some(format!("e{i}").as_str()));
    }
    server.stop().await;
}

/// A message may be edited `history.max_edits_per_message` times: each
/// edit keeps its text in the store's log until the message leaves history.
#[tokio::test]
async fn a_message_is_edited_at_most_so_many_times() {
    let server = TestServer::start_with(|c| c.history.max_edits_per_message = 2).await;
    let (mut dan, mut bob, topic) = setup(&server).await;
    let id = say(&mut dan, &topic, "first").await;
    expect_op(&mut bob, "send").await;
    let edit = |body: &str| {
        on("edit", &topic)
            .with("id", id.as_str())
            .with("body", body)
    };
    for body in ["second", "third"] {
        let p = request(&mut dan, edit(body)).await;
        assert_eq!(p.op, "ack", "{p:?}");
        expect_op(&mut bob, "edit").await;
    }
    let p = request(&mut dan, edit("fourth")).await;
    assert_eq!(p.ex_str("code"), Some("message/too-many-edits"), "{p:?}");
    assert_eq!(history(&mut bob, &topic).await[0]["body"], json!("third"));
    server.stop().await;
}
