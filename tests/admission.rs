//! Topics whose members admit newcomers (`admission: members`): a
//! non-member's `join` becomes a request pushed to the members holding
//! `admit`, who admit or decline it, or it expires; the limits on it; what
//! survives a restart; `binary` messages relayed as sent and never searched.

mod common;

use common::*;
use serde_json::{Value, json};
use tenthbit::client::Client;
use tenthbit::proto::Packet;

/// dan owns `club` (members admit newcomers), carol is a plain member,
/// bob and eve are outsiders. Returns dan, carol, bob and the topic id.
async fn setup(server: &TestServer) -> (Client, Client, Client, String) {
    for name in ["dan", "carol", "bob", "eve"] {
        server.register(name, "hellosecret").await;
    }
    let mut dan = server.login("dan", "hellosecret").await;
    let mut carol = server.login("carol", "hellosecret").await;
    let bob = server.login("bob", "hellosecret").await;
    let p = request(&mut dan, Packet::request("create").with("name", "club")).await;
    let topic = p.topic.expect("topic id");
    assert_eq!(request(&mut carol, on("join", &topic)).await.op, "meta");
    expect_op(&mut dan, "join").await;
    let ack = request(&mut dan, on("meta", &topic).with("admission", "members")).await;
    assert_eq!(ack.op, "ack", "{ack:?}");
    let meta = expect_op(&mut carol, "meta").await;
    assert_eq!(meta.ex_str("admission"), Some("members"));
    (dan, carol, bob, topic)
}

/// `who` asks to join `topic`: the pending `ack`.
async fn ask(who: &mut Client, topic: &str) -> Packet {
    let ack = request(who, on("join", topic)).await;
    assert_eq!(ack.op, "ack", "{ack:?}");
    assert_eq!(ack.ex.get("pending"), Some(&json!(true)), "{ack:?}");
    ack
}

fn admit(topic: &str, user: &str, accept: bool) -> Packet {
    on("admit", topic).with("user", user).with("accept", accept)
}

fn members(meta: &Packet) -> Vec<String> {
    meta.ex["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m.as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_request_is_pushed_to_admitters_admitted_and_announced() {
    let server = TestServer::start().await;
    let (mut dan, mut carol, mut bob, topic) = setup(&server).await;

    let join = on("join", &topic)
        .with("note", "it's bob from the meetup")
        .with("key", "x25519:Ym9iJ3Mga2V5");
    let ack = request(&mut bob, join).await;
    assert_eq!(ack.op, "ack", "{ack:?}");
    assert_eq!(ack.ex["pending"], json!(true));
    let request_id = ack.ex_str("request").expect("request id").to_owned();
    let expires = ack.ex["expires"].as_i64().expect("expires");
    assert!(expires > tenthbit::proto::id::now_ms());

    // The owner holds `admit`; carol, a plain member, is not asked.
    let pushed = expect_op(&mut dan, "join-request").await;
    assert_eq!(pushed.topic.as_deref(), Some(topic.as_str()));
    assert_eq!(pushed.from.as_deref(), Some("bob"));
    assert_eq!(pushed.ex_str("request"), Some(request_id.as_str()));
    assert_eq!(pushed.ex["expires"], json!(expires));
    assert_eq!(pushed.ex_str("note"), Some("it's bob from the meetup"));
    assert_eq!(pushed.ex_str("key"), Some("x25519:Ym9iJ3Mga2V5"));
    assert!(pushed.ex_str("for").is_none());

    // Before admission bob can neither read nor send.
    for op in ["history", "meta", "acl", "mark"] {
        let p = request(&mut bob, on(op, &topic)).await;
        assert_eq!(p.ex_str("code"), Some("topic/not-member"), "{op}: {p:?}");
    }
    let p = request(&mut bob, on("send", &topic).with("body", "let me in")).await;
    assert_eq!(p.ex_str("code"), Some("topic/not-member"), "{p:?}");
    let found = request(&mut bob, Packet::request("search").with("q", "anything")).await;
    assert_eq!(found.op, "search", "{found:?}");

    let ack = request(
        &mut dan,
        admit(&topic, "bob", true).with("key", "sealed-session-key"),
    )
    .await;
    assert_eq!(ack.op, "ack", "{ack:?}");
    let told = expect_op(&mut bob, "admit").await;
    assert_eq!(told.from.as_deref(), Some("dan"));
    assert_eq!(told.topic.as_deref(), Some(topic.as_str()));
    assert_eq!(told.ex_str("user"), Some("bob"));
    assert_eq!(told.ex_str("result"), Some("admitted"));
    assert_eq!(told.ex_str("request"), Some(request_id.as_str()));
    assert_eq!(told.ex_str("key"), Some("sealed-session-key"));
    let joined = expect_op(&mut bob, "join").await;
    assert_eq!(joined.from.as_deref(), Some("bob"));
    let joined = expect_op(&mut carol, "join").await;
    assert_eq!(joined.from.as_deref(), Some("bob"));
    assert_eq!(joined.topic.as_deref(), Some(topic.as_str()));

    // Now a member: bob reads and sends, and the others get it.
    let meta = request(&mut bob, on("meta", &topic)).await;
    assert_eq!(meta.op, "meta");
    assert!(members(&meta).contains(&"bob".to_owned()), "{meta:?}");
    let p = request(&mut bob, on("send", &topic).with("body", "thanks")).await;
    assert_eq!(p.op, "ack", "{p:?}");
    assert_eq!(
        expect_op(&mut carol, "send").await.ex_str("body"),
        Some("thanks")
    );
    assert_eq!(
        expect_op(&mut dan, "send").await.ex_str("body"),
        Some("thanks")
    );
    // The request is settled: admitting again finds nothing pending.
    let again = request(&mut dan, admit(&topic, "bob", true)).await;
    assert_eq!(
        again.ex_str("code"),
        Some("admission/not-pending"),
        "{again:?}"
    );
}

#[tokio::test]
async fn a_declined_request_leaves_the_newcomer_out_and_other_admitters_are_told() {
    let server = TestServer::start().await;
    let (mut dan, mut carol, mut bob, topic) = setup(&server).await;
    // carol may admit too: both are asked.
    let p = request(
        &mut dan,
        on("acl", &topic)
            .with("subject", "carol")
            .with("grant", json!(["admit"])),
    )
    .await;
    assert_eq!(p.op, "ack", "{p:?}");
    expect_op(&mut carol, "acl").await;
    ask(&mut bob, &topic).await;
    expect_op(&mut dan, "join-request").await;
    expect_op(&mut carol, "join-request").await;

    let ack = request(
        &mut carol,
        admit(&topic, "bob", false).with("note", "not tonight"),
    )
    .await;
    assert_eq!(ack.op, "ack", "{ack:?}");
    let told = expect_op(&mut bob, "admit").await;
    assert_eq!(told.ex_str("result"), Some("declined"));
    assert_eq!(told.from.as_deref(), Some("carol"));
    assert_eq!(told.ex_str("note"), Some("not tonight"));
    // dan learns it is settled, without what was said to bob.
    let settled = expect_op(&mut dan, "admit").await;
    assert_eq!(settled.ex_str("result"), Some("declined"));
    assert_eq!(settled.ex_str("user"), Some("bob"));
    assert!(settled.ex_str("note").is_none());
    let late = request(&mut dan, admit(&topic, "bob", true)).await;
    assert_eq!(late.ex_str("code"), Some("admission/not-pending"));
    let meta = request(&mut dan, on("meta", &topic)).await;
    assert!(!members(&meta).contains(&"bob".to_owned()), "{meta:?}");
    let p = request(&mut bob, on("history", &topic)).await;
    assert_eq!(p.ex_str("code"), Some("topic/not-member"));
}

#[tokio::test]
async fn a_request_nobody_answers_expires() {
    let server = TestServer::start_with(|c| c.limits.join_request_ttl_ms = 300).await;
    let (mut dan, _carol, mut bob, topic) = setup(&server).await;
    let first = ask(&mut bob, &topic).await;
    expect_op(&mut dan, "join-request").await;
    let told = expect_op(&mut bob, "admit").await;
    assert_eq!(told.ex_str("result"), Some("expired"));
    assert_eq!(told.from.as_deref(), Some("@localhost"));
    assert_eq!(told.ex_str("request"), first.ex_str("request"));
    let settled = expect_op(&mut dan, "admit").await;
    assert_eq!(settled.ex_str("result"), Some("expired"));
    let late = request(&mut dan, admit(&topic, "bob", true)).await;
    assert_eq!(late.ex_str("code"), Some("admission/not-pending"));
    // Asking again makes a new request.
    let second = ask(&mut bob, &topic).await;
    assert_ne!(second.ex_str("request"), first.ex_str("request"));
}

#[tokio::test]
async fn admitting_needs_the_admit_right_and_membership() {
    let server = TestServer::start().await;
    let (mut dan, mut carol, mut bob, topic) = setup(&server).await;
    ask(&mut bob, &topic).await;
    expect_op(&mut dan, "join-request").await;
    let p = request(&mut carol, admit(&topic, "bob", true)).await;
    assert_eq!(p.ex_str("code"), Some("acl/denied"), "{p:?}");
    // `*` may admit, but only members do; eve, an outsider, may not.
    let p = request(
        &mut dan,
        on("acl", &topic)
            .with("subject", "*")
            .with("grant", json!(["admit"])),
    )
    .await;
    assert_eq!(p.op, "ack", "{p:?}");
    let mut eve = server.login("eve", "hellosecret").await;
    let p = request(&mut eve, admit(&topic, "bob", true)).await;
    assert_eq!(p.ex_str("code"), Some("topic/not-member"), "{p:?}");
    // Nobody has asked as eve.
    let p = request(&mut carol, admit(&topic, "eve", true)).await;
    assert_eq!(p.ex_str("code"), Some("admission/not-pending"), "{p:?}");
    let p = request(&mut carol, admit(&topic, "nobody", true)).await;
    assert_eq!(p.ex_str("code"), Some("admission/not-pending"), "{p:?}");
    // Now carol holds `admit` through `*`.
    let p = request(&mut carol, admit(&topic, "bob", true)).await;
    assert_eq!(p.op, "ack", "{p:?}");
    assert_eq!(
        expect_op(&mut bob, "admit").await.ex_str("result"),
        Some("admitted")
    );
    // Unknown topics and bad values.
    let p = request(&mut dan, admit("no-such-topic", "bob", true)).await;
    assert_eq!(p.ex_str("code"), Some("topic/not-found"));
    let p = request(&mut dan, on("meta", &topic).with("admission", "friends")).await;
    assert_eq!(p.ex_str("code"), Some("meta/invalid"), "{p:?}");
}

#[tokio::test]
async fn a_second_request_is_the_first_and_requests_are_bounded() {
    let server = TestServer::start_with(|c| c.limits.max_join_requests_per_topic = 1).await;
    let (mut dan, _carol, mut bob, topic) = setup(&server).await;
    let first = ask(&mut bob, &topic).await;
    expect_op(&mut dan, "join-request").await;
    let second = ask(&mut bob, &topic).await;
    assert_eq!(second.ex_str("request"), first.ex_str("request"));
    assert_eq!(second.ex["expires"], first.ex["expires"]);
    // dan is not asked twice: the next thing he reads is his own pong.
    assert_alive(&mut dan).await;
    let mut eve = server.login("eve", "hellosecret").await;
    let p = request(&mut eve, on("join", &topic)).await;
    assert_eq!(p.ex_str("code"), Some("admission/too-many"), "{p:?}");
    // Withdrawing (`leave`) frees the place and tells the admitters.
    let p = request(&mut bob, on("leave", &topic)).await;
    assert_eq!(p.op, "ack", "{p:?}");
    let gone = expect_op(&mut dan, "admit").await;
    assert_eq!(gone.ex_str("result"), Some("withdrawn"));
    assert_eq!(gone.from.as_deref(), Some("bob"));
    ask(&mut eve, &topic).await;
    let p = request(&mut bob, on("leave", &topic)).await;
    assert_eq!(p.ex_str("code"), Some("topic/not-member"));
}

#[tokio::test]
async fn an_admitter_who_connects_later_is_shown_what_is_pending() {
    let server = TestServer::start().await;
    let (dan, _carol, mut bob, topic) = setup(&server).await;
    dan.close(WAIT).await;
    let ack = ask(&mut bob, &topic).await;
    let mut dan = server.client().await;
    assert_eq!(
        request(&mut dan, password_auth("dan", "hellosecret"))
            .await
            .op,
        "ack"
    );
    expect_op(&mut dan, "meta").await;
    expect_op(&mut dan, "meta").await;
    let meta = expect_op(&mut dan, "meta").await;
    assert_eq!(meta.topic.as_deref(), Some(topic.as_str()));
    let pushed = expect_op(&mut dan, "join-request").await;
    assert_eq!(pushed.ex_str("request"), ack.ex_str("request"));
    let p = request(&mut dan, admit(&topic, "bob", true)).await;
    assert_eq!(p.op, "ack", "{p:?}");
    expect_op(&mut bob, "admit").await;
}

#[tokio::test]
async fn an_admission_survives_a_restart_and_a_pending_request_does_not() {
    let server = TestServer::start().await;
    let (mut dan, _carol, mut bob, topic) = setup(&server).await;
    ask(&mut bob, &topic).await;
    expect_op(&mut dan, "join-request").await;
    assert_eq!(
        request(&mut dan, admit(&topic, "bob", true)).await.op,
        "ack"
    );
    let mut eve = server.login("eve", "hellosecret").await;
    ask(&mut eve, &topic).await;
    drop((dan, bob, eve));
    let server = server.restart(|_| {}).await;

    let mut dan = server.client().await;
    assert_eq!(
        request(&mut dan, password_auth("dan", "hellosecret"))
            .await
            .op,
        "ack"
    );
    expect_op(&mut dan, "meta").await;
    expect_op(&mut dan, "meta").await;
    let meta = expect_op(&mut dan, "meta").await;
    assert_eq!(meta.ex_str("admission"), Some("members"));
    assert!(members(&meta).contains(&"bob".to_owned()), "{meta:?}");
    assert!(!members(&meta).contains(&"eve".to_owned()), "{meta:?}");
    // eve's request was soft state: gone, and nothing is pushed at login.
    let p = request(&mut dan, admit(&topic, "eve", true)).await;
    assert_eq!(p.ex_str("code"), Some("admission/not-pending"), "{p:?}");
    let mut bob = server.login("bob", "hellosecret").await;
    expect_op(&mut bob, "meta").await;
    let p = request(&mut bob, on("history", &topic)).await;
    assert_eq!(p.op, "history", "{p:?}");
    let mut eve = server.login("eve", "hellosecret").await;
    ask(&mut eve, &topic).await;
    let pushed = expect_op(&mut dan, "join-request").await;
    assert_eq!(pushed.from.as_deref(), Some("eve"));
}

#[tokio::test]
async fn admit_obeys_the_field_line_and_rate_limits() {
    let server = TestServer::start_with(|c| {
        c.limits.max_line_bytes = 16 * 1024;
        c.limits.packet_burst = 60;
        c.limits.packets_per_second = 1;
    })
    .await;
    let (mut dan, _carol, mut bob, topic) = setup(&server).await;
    let p = request(&mut dan, on("admit", &topic).with("user", "bob")).await;
    assert_eq!(p.ex_str("code"), Some("request/invalid"), "{p:?}");
    let p = request(&mut dan, admit(&topic, "bob", true).with("accept", "yes")).await;
    assert_eq!(p.ex_str("code"), Some("request/invalid"), "{p:?}");
    let p = request(&mut dan, Packet::request("admit").with("user", "bob")).await;
    assert_eq!(p.ex_str("code"), Some("request/invalid"), "{p:?}");
    let p = request(
        &mut dan,
        admit(&topic, "bob", true).with("note", "n".repeat(1025)),
    )
    .await;
    assert_eq!(p.ex_str("code"), Some("request/invalid"), "{p:?}");
    let p = request(&mut bob, on("join", &topic).with("key", "k".repeat(8193))).await;
    assert_eq!(p.ex_str("code"), Some("request/invalid"), "{p:?}");
    let p = request(&mut bob, on("join", &topic).with("note", Value::from(7))).await;
    assert_eq!(p.ex_str("code"), Some("request/invalid"), "{p:?}");

    // A line over the limit is refused whole, whatever its op.
    let long = admit(&topic, "bob", true).with("key", "k".repeat(17 * 1024));
    let mut line = long.to_line().to_vec();
    line.truncate(line.len() - 1);
    line.push(b'\n');
    dan.send_raw(&line).await.expect("send");
    expect_error(&mut dan, "packet/too-large").await;

    // Past the burst, `admit` is rate limited like any packet.
    let mut limited = None;
    for i in 0..80 {
        let p = request(
            &mut dan,
            admit(&topic, "bob", false).with_id(format!("a{i}")),
        )
        .await;
        if p.ex_str("code") == Some("rate/limited") {
            limited = Some(p);
            break;
        }
        assert_eq!(p.ex_str("code"), Some("admission/not-pending"), "{p:?}");
    }
    let limited = limited.expect("admit was rate limited");
    assert!(
        limited.ex["retry_after_ms"]
            .as_u64()
            .is_some_and(|ms| ms >= 1)
    );
}

#[tokio::test]
async fn binary_messages_travel_as_sent_and_are_never_searched() {
    let server = TestServer::start().await;
    let (mut dan, mut carol, mut bob, topic) = setup(&server).await;
    let p = request(&mut dan, on("meta", &topic).with("format", "binary")).await;
    assert_eq!(p.op, "ack");
    expect_op(&mut carol, "meta").await;
    ask(&mut bob, &topic).await;
    expect_op(&mut dan, "join-request").await;
    assert_eq!(
        request(&mut dan, admit(&topic, "bob", true)).await.op,
        "ack"
    );
    expect_op(&mut bob, "admit").await;
    expect_op(&mut bob, "join").await;
    expect_op(&mut carol, "join").await;

    // Ciphertext as the client wrote it (spacing, escapes, big numbers).
    let ex = r#"{ "ct" : "c2VjcmV0IHBsYW5z\u002f", "n" : 18446744073709551617, "alg":"x25519-aes256gcm" }"#;
    let line = format!("{{\"op\":\"send\",\"id\":\"b1\",\"topic\":\"{topic}\",\"ex\":{ex}}}\n");
    bob.send_raw(line.as_bytes()).await.expect("send");
    let relayed = line_with_op(&mut carol, "send").await;
    assert!(relayed.ends_with(&format!(",\"ex\":{ex}}}")), "{relayed}");
    line_with_op(&mut dan, "send").await;
    let ack = line_with_op(&mut bob, "ack").await;
    assert!(ack.contains("\"for\":\"b1\""), "{ack}");
    // Kept in history as sent, never searched.
    let h = request(&mut dan, on("history", &topic)).await;
    assert_eq!(h.ex["messages"].as_array().map(Vec::len), Some(1), "{h:?}");
    let s = request(
        &mut dan,
        Packet::request("search").with("q", "x25519-aes256gcm"),
    )
    .await;
    assert_eq!(s.ex["messages"], json!([]), "{s:?}");
    let s = request(&mut dan, on("search", &topic).with("q", "c2VjcmV0IHBsYW5z")).await;
    assert_eq!(s.ex["messages"], json!([]), "{s:?}");
}

/// An outsider finds a topic whose members admit newcomers by its name,
/// but cannot test the metadata it is not shown.
#[tokio::test]
async fn outsiders_cannot_probe_the_metadata_of_a_members_topic() {
    let server = TestServer::start().await;
    let (mut dan, _carol, mut bob, topic) = setup(&server).await;
    let ack = request(&mut dan, on("meta", &topic).with("secret", "x25519")).await;
    assert_eq!(ack.op, "ack", "{ack:?}");
    let find = |meta: Value| {
        Packet::request("find")
            .with("name", "club")
            .with("meta", meta)
    };
    let listed = |p: &Packet| p.ex["topics"].as_array().map_or(0, Vec::len);
    let p = request(&mut bob, Packet::request("find").with("name", "club")).await;
    assert_eq!(listed(&p), 1, "{p:?}");
    for meta in [json!({"secret": "x25519"}), json!({"admission": "members"})] {
        let p = request(&mut bob, find(meta.clone())).await;
        assert_eq!(listed(&p), 0, "{meta}: {p:?}");
        let p = request(&mut dan, find(meta.clone())).await;
        assert_eq!(listed(&p), 1, "{meta}: {p:?}");
    }
    server.stop().await;
}
