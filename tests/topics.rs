//! Topics end to end: create, join, leave, send, topic metadata, ACLs (every
//! flag allowing and denying), bans, deletion, the login sequence, restarts,
//! and a slow consumer that is cut while everyone else gets every message.

mod common;

use common::*;
use serde_json::{Value, json};
use tenthbit::client::Client;
use tenthbit::config::Limits;
use tenthbit::proto::Packet;

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

async fn join(c: &mut Client, topic: &str) -> Packet {
    request(c, on("join", topic)).await
}

async fn acl(
    c: &mut Client,
    topic: &str,
    subject: &str,
    grant: &[&str],
    revoke: &[&str],
) -> Packet {
    request(
        c,
        on("acl", topic)
            .with("subject", subject)
            .with("grant", json!(grant))
            .with("revoke", json!(revoke)),
    )
    .await
}

fn code(p: &Packet) -> Option<&str> {
    p.ex_str("code")
}

/// Three users: dan (creator/owner), bob and amy, each logged in.
async fn three(server: &TestServer) -> (Client, Client, Client) {
    for n in ["dan", "bob", "amy"] {
        server.register(n, "hellosecret").await;
    }
    (
        server.login("dan", "hellosecret").await,
        server.login("bob", "hellosecret").await,
        server.login("amy", "hellosecret").await,
    )
}

#[tokio::test]
async fn create_join_send_leave() {
    let server = TestServer::start().await;
    let (mut dan, mut bob, _amy) = three(&server).await;
    let p = request(
        &mut dan,
        Packet::request("create")
            .with("name", "Lobby")
            .with("description", "hi"),
    )
    .await;
    assert_eq!(p.op, "meta");
    let topic = p.topic.clone().unwrap();
    assert!(uuid::Uuid::parse_str(&topic).is_ok());
    assert_eq!(p.ex_str("name"), Some("Lobby"));
    assert_eq!(p.ex_str("description"), Some("hi"));
    assert_eq!(p.ex.get("members"), Some(&json!(["dan"])));
    assert_eq!(
        p.ex.get("acl"),
        Some(&json!([["dan", ["owner"]], ["*", ["read", "write"]]]))
    );
    let p = request(&mut dan, Packet::request("create").with("name", "lobby")).await;
    assert_eq!(code(&p), Some("topic/name-taken"));
    let p = request(
        &mut dan,
        Packet::request("create").with("name", "no spaces"),
    )
    .await;
    assert_eq!(code(&p), Some("topic/invalid-name"));
    let p = request(
        &mut dan,
        Packet::request("create")
            .with("name", "x")
            .with("members", json!(["eve"])),
    )
    .await;
    assert_eq!(code(&p), Some("meta/invalid"));

    // Join by name; the reply lists the members, self included.
    let p = request(&mut bob, Packet::request("join").with("name", "lobby")).await;
    assert_eq!(p.op, "meta");
    assert_eq!(p.topic.as_deref(), Some(topic.as_str()));
    assert_eq!(p.ex.get("members"), Some(&json!(["dan", "bob"])));
    let j = expect_op(&mut dan, "join").await;
    assert_eq!(j.from.as_deref(), Some("bob"));
    assert_eq!(j.topic.as_deref(), Some(topic.as_str()));
    // Joining again changes nothing and announces nothing.
    assert_eq!(join(&mut bob, &topic).await.op, "meta");

    // send: relayed with server id/ts, ex as sent (less `for`), ack echoes both.
    let msg = on("send", &topic)
        .with("data", "hello")
        .with("format", "plain")
        .with("for", "spoof");
    let ack = request(&mut bob, msg).await;
    assert_eq!(ack.op, "ack");
    let got = expect_op(&mut dan, "send").await;
    assert_eq!(got.from.as_deref(), Some("bob"));
    assert_eq!(got.topic.as_deref(), Some(topic.as_str()));
    assert_eq!(got.ex_str("data"), Some("hello"));
    assert_eq!(got.ex_str("format"), Some("plain"));
    assert!(got.ex.get("for").is_none());
    assert_eq!(ack.ex_str("id"), got.id.as_deref());
    assert_eq!(ack.ex.get("ts").and_then(Value::as_i64), got.ts);

    // leave: announced; sending afterwards needs membership.
    let p = request(&mut bob, on("leave", &topic)).await;
    assert_eq!(p.op, "ack");
    let l = expect_op(&mut dan, "leave").await;
    assert_eq!(l.from.as_deref(), Some("bob"));
    let p = request(&mut bob, on("send", &topic).with("data", "x")).await;
    assert_eq!(code(&p), Some("topic/not-member"));
    let p = request(&mut bob, on("leave", &topic)).await;
    assert_eq!(code(&p), Some("topic/not-member"));
    let p = request(&mut bob, on("join", "00000000-0000-7000-8000-000000000000")).await;
    assert_eq!(code(&p), Some("topic/not-found"));
    assert_alive(&mut dan).await;
    server.stop().await;
}

#[tokio::test]
async fn every_connection_of_every_member_receives() {
    let server = TestServer::start().await;
    let (mut dan, mut bob, _amy) = three(&server).await;
    let mut bob_phone = server.login("bob", "hellosecret").await;
    let topic = create(&mut dan, "devices").await;
    join(&mut bob, &topic).await;
    expect_op(&mut dan, "join").await;
    // The account's other device learns of the join too.
    expect_op(&mut bob_phone, "join").await;
    request(&mut dan, on("send", &topic).with("data", "to both")).await;
    for c in [&mut bob, &mut bob_phone] {
        assert_eq!(expect_op(c, "send").await.ex_str("data"), Some("to both"));
    }
    // The sender's own other device gets it; the sending connection does not.
    request(&mut bob, on("send", &topic).with("data", "from bob")).await;
    assert_eq!(
        expect_op(&mut bob_phone, "send").await.ex_str("data"),
        Some("from bob")
    );
    assert_eq!(
        expect_op(&mut dan, "send").await.ex_str("data"),
        Some("from bob")
    );
    assert_alive(&mut bob).await;
    server.stop().await;
}

#[tokio::test]
async fn read_flag_makes_invite_only() {
    let server = TestServer::start().await;
    let (mut dan, mut bob, mut amy) = three(&server).await;
    let topic = create(&mut dan, "secret").await;
    assert_eq!(acl(&mut dan, &topic, "*", &[], &["read"]).await.op, "ack");
    assert_eq!(code(&join(&mut bob, &topic).await), Some("acl/denied"));
    assert_eq!(acl(&mut dan, &topic, "bob", &["read"], &[]).await.op, "ack");
    assert_eq!(join(&mut bob, &topic).await.op, "meta");
    assert_eq!(code(&join(&mut amy, &topic).await), Some("acl/denied"));
    // Reading the ACL needs read, too.
    assert_eq!(
        code(&request(&mut amy, on("acl", &topic)).await),
        Some("acl/denied")
    );
    let p = request(&mut bob, on("acl", &topic)).await;
    assert_eq!(p.op, "acl");
    assert_eq!(
        p.ex.get("acl"),
        Some(&json!([
            ["dan", ["owner"]],
            ["bob", ["read"]],
            ["*", ["write"]]
        ]))
    );
    server.stop().await;
}

#[tokio::test]
async fn write_flag_makes_moderated() {
    let server = TestServer::start().await;
    let (mut dan, mut bob, _amy) = three(&server).await;
    let topic = create(&mut dan, "announcements").await;
    join(&mut bob, &topic).await;
    expect_op(&mut dan, "join").await;
    assert_eq!(
        request(&mut bob, on("send", &topic).with("data", "1"))
            .await
            .op,
        "ack"
    );
    expect_op(&mut dan, "send").await;
    acl(&mut dan, &topic, "*", &[], &["write"]).await;
    expect_op(&mut bob, "acl").await;
    assert_eq!(
        code(&request(&mut bob, on("send", &topic).with("data", "2")).await),
        Some("acl/denied")
    );
    // The owner still speaks; bob still reads.
    request(&mut dan, on("send", &topic).with("data", "3")).await;
    assert_eq!(expect_op(&mut bob, "send").await.ex_str("data"), Some("3"));
    acl(&mut dan, &topic, "bob", &["write"], &[]).await;
    expect_op(&mut bob, "acl").await;
    assert_eq!(
        request(&mut bob, on("send", &topic).with("data", "4"))
            .await
            .op,
        "ack"
    );
    server.stop().await;
}

#[tokio::test]
async fn op_and_owner_powers() {
    let server = TestServer::start().await;
    let (mut dan, mut bob, mut amy) = three(&server).await;
    let topic = create(&mut dan, "ops").await;
    join(&mut bob, &topic).await;
    join(&mut amy, &topic).await;
    // Without op: no metadata changes, no bans, no ACL changes, no delete.
    assert_eq!(
        code(&request(&mut bob, on("meta", &topic).with("description", "x")).await),
        Some("acl/denied")
    );
    assert_eq!(
        code(&acl(&mut bob, &topic, "amy", &["ban"], &[]).await),
        Some("acl/denied")
    );
    assert_eq!(
        code(&request(&mut bob, on("delete", &topic)).await),
        Some("acl/denied")
    );
    // With op: metadata and bans of non-ops, but nothing else.
    assert_eq!(acl(&mut dan, &topic, "bob", &["op"], &[]).await.op, "ack");
    assert_eq!(
        request(&mut bob, on("meta", &topic).with("description", "by bob"))
            .await
            .op,
        "ack"
    );
    assert_eq!(
        code(&acl(&mut bob, &topic, "amy", &["read"], &[]).await),
        Some("acl/denied")
    );
    assert_eq!(
        code(&acl(&mut bob, &topic, "dan", &["ban"], &[]).await),
        Some("acl/denied")
    );
    assert_eq!(
        code(&request(&mut bob, on("delete", &topic)).await),
        Some("acl/denied")
    );
    assert_eq!(acl(&mut bob, &topic, "amy", &["ban"], &[]).await.op, "ack");
    // The last owner cannot give up ownership; `*` cannot be banned.
    assert_eq!(
        code(&acl(&mut dan, &topic, "dan", &[], &["owner"]).await),
        Some("request/invalid")
    );
    assert_eq!(
        code(&acl(&mut dan, &topic, "*", &["ban"], &[]).await),
        Some("request/invalid")
    );
    assert_eq!(
        code(&acl(&mut dan, &topic, "nobody", &["read"], &[]).await),
        Some("request/invalid")
    );
    assert_eq!(
        code(&acl(&mut dan, &topic, "bob", &["admin"], &[]).await),
        Some("request/invalid")
    );
    // The owner deletes; members are told; the name is free again.
    assert_eq!(request(&mut dan, on("delete", &topic)).await.op, "ack");
    let mut saw_delete = false;
    for _ in 0..8 {
        let p = bob.recv_timeout(WAIT).await.unwrap();
        if p.op == "delete" {
            assert_eq!(p.topic.as_deref(), Some(topic.as_str()));
            saw_delete = true;
            break;
        }
    }
    assert!(saw_delete);
    assert_eq!(code(&join(&mut bob, &topic).await), Some("topic/not-found"));
    create(&mut dan, "ops").await;
    server.stop().await;
}

#[tokio::test]
async fn ban_removes_a_member_at_once() {
    let server = TestServer::start().await;
    let (mut dan, mut bob, mut amy) = three(&server).await;
    let topic = create(&mut dan, "bans").await;
    join(&mut bob, &topic).await;
    expect_op(&mut dan, "join").await;
    // Both send before the membership changes: what a sender remembers of
    // the topic must not outlive the change.
    request(&mut dan, on("send", &topic).with("data", "early")).await;
    expect_op(&mut bob, "send").await;
    join(&mut amy, &topic).await;
    expect_op(&mut dan, "join").await;
    expect_op(&mut bob, "join").await;
    request(&mut bob, on("send", &topic).with("data", "before the ban")).await;
    expect_op(&mut dan, "send").await;
    expect_op(&mut amy, "send").await;
    assert_eq!(acl(&mut dan, &topic, "bob", &["ban"], &[]).await.op, "ack");
    // bob is told, and is out (so the ACL update itself is not his to see):
    // no more messages, no rejoin.
    let l = expect_op(&mut bob, "leave").await;
    assert_eq!(l.from.as_deref(), Some("bob"));
    assert_eq!(l.ex_str("reason"), Some("banned"));
    expect_op(&mut amy, "acl").await;
    assert_eq!(
        expect_op(&mut amy, "leave").await.from.as_deref(),
        Some("bob")
    );
    request(&mut dan, on("send", &topic).with("data", "after the ban")).await;
    assert_eq!(
        expect_op(&mut amy, "send").await.ex_str("data"),
        Some("after the ban")
    );
    assert_eq!(code(&join(&mut bob, &topic).await), Some("acl/denied"));
    assert_eq!(
        code(&request(&mut bob, on("send", &topic).with("data", "x")).await),
        Some("topic/not-member")
    );
    // A ban beats an explicit grant; lifting it lets bob back.
    acl(&mut dan, &topic, "bob", &["read", "write"], &[]).await;
    assert_eq!(code(&join(&mut bob, &topic).await), Some("acl/denied"));
    acl(&mut dan, &topic, "bob", &[], &["ban"]).await;
    assert_eq!(join(&mut bob, &topic).await.op, "meta");
    server.stop().await;
}

/// A ban of a whole server (here this one, `@localhost`) puts out every
/// member it bans, at once, and no owner; only owners ban servers (a
/// server's ban would reach ops). An owner may take `owner` back from any
/// subject while an owner is left.
#[tokio::test]
async fn a_server_ban_puts_out_whom_it_bans_and_spares_owners() {
    let server = TestServer::start().await;
    let (mut dan, mut bob, mut amy) = three(&server).await;
    let topic = create(&mut dan, "club").await;
    join(&mut bob, &topic).await;
    expect_op(&mut dan, "join").await;
    join(&mut amy, &topic).await;
    expect_op(&mut dan, "join").await;
    expect_op(&mut bob, "join").await;
    assert_eq!(acl(&mut dan, &topic, "amy", &["op"], &[]).await.op, "ack");
    assert_eq!(
        acl(&mut dan, &topic, "bob", &["owner"], &[]).await.op,
        "ack"
    );
    for c in [&mut bob, &mut amy] {
        expect_op(c, "acl").await;
        expect_op(c, "acl").await;
    }
    assert_eq!(
        code(&acl(&mut amy, &topic, "@localhost", &["ban"], &[]).await),
        Some("acl/denied")
    );
    assert_eq!(
        code(&acl(&mut amy, &topic, "bob", &["ban"], &[]).await),
        Some("acl/denied")
    );
    assert_eq!(
        acl(&mut dan, &topic, "@localhost", &["ban"], &[]).await.op,
        "ack"
    );
    let l = expect_op(&mut amy, "leave").await;
    assert_eq!(l.from.as_deref(), Some("amy"));
    assert_eq!(l.ex_str("reason"), Some("banned"));
    let meta = request(&mut dan, on("meta", &topic)).await;
    assert_eq!(meta.ex["members"], json!(["dan", "bob"]), "{meta:?}");
    assert_eq!(
        code(&request(&mut amy, on("send", &topic).with("data", "x")).await),
        Some("topic/not-member")
    );
    assert_eq!(code(&join(&mut amy, &topic).await), Some("acl/denied"));
    // `owner` given to a user of another server is taken back; bob's
    // is too, and dan's then is the last.
    let carol = "carol@other.example";
    assert_eq!(
        acl(&mut dan, &topic, carol, &["owner"], &[]).await.op,
        "ack"
    );
    assert_eq!(
        acl(&mut dan, &topic, carol, &[], &["owner"]).await.op,
        "ack"
    );
    assert_eq!(
        acl(&mut dan, &topic, "bob", &[], &["owner"]).await.op,
        "ack"
    );
    assert_eq!(
        code(&acl(&mut dan, &topic, "dan", &[], &["owner"]).await),
        Some("request/invalid")
    );
    server.stop().await;
}

#[tokio::test]
async fn topic_metadata_and_rename() {
    let server = TestServer::start().await;
    let (mut dan, mut bob, _amy) = three(&server).await;
    let topic = create(&mut dan, "art").await;
    join(&mut bob, &topic).await;
    expect_op(&mut dan, "join").await;
    let p = request(
        &mut dan,
        on("meta", &topic)
            .with("format", "fixed:ascii-art")
            .with("description", "pictures"),
    )
    .await;
    assert_eq!(p.op, "ack", "{p:?}");
    let m = expect_op(&mut bob, "meta").await;
    assert_eq!(m.ex_str("format"), Some("fixed:ascii-art"));
    for bad in [
        on("meta", &topic).with("format", "Fixed Width"),
        on("meta", &topic).with("format", 5),
        on("meta", &topic).with("members", json!([])),
        on("meta", &topic).with("Bad Key", 1),
    ] {
        assert_eq!(code(&request(&mut dan, bad).await), Some("meta/invalid"));
    }
    // Rename keeps the UUID.
    assert_eq!(
        request(&mut dan, on("meta", &topic).with("name", "Gallery"))
            .await
            .op,
        "ack"
    );
    let p = request(&mut bob, on("meta", &topic)).await;
    assert_eq!(p.ex_str("name"), Some("Gallery"));
    assert_eq!(p.topic.as_deref(), Some(topic.as_str()));
    let p = request(&mut bob, Packet::request("join").with("name", "gallery")).await;
    assert_eq!(p.topic.as_deref(), Some(topic.as_str()));
    create(&mut dan, "taken").await;
    assert_eq!(
        code(&request(&mut dan, on("meta", &topic).with("name", "TAKEN")).await),
        Some("topic/name-taken")
    );
    server.stop().await;
}

#[tokio::test]
async fn login_sends_a_meta_per_topic_and_state_survives_restart() {
    let server = TestServer::start().await;
    let (mut dan, mut bob, _amy) = three(&server).await;
    let a = create(&mut dan, "alpha").await;
    let b = create(&mut dan, "beta").await;
    join(&mut bob, &a).await;
    acl(&mut dan, &b, "*", &[], &["write"]).await;
    request(&mut dan, on("meta", &b).with("description", "kept")).await;
    // bob marks beta as an autojoin favourite.
    request(
        &mut bob,
        Packet::request("meta").with("favorites", json!([{"topic": "beta", "autojoin": true}])),
    )
    .await;

    let server = server.restart(|_| {}).await;
    let mut c = server.client().await;
    assert_eq!(
        request(&mut c, password_auth("bob", "hellosecret"))
            .await
            .op,
        "ack"
    );
    expect_op(&mut c, "meta").await;
    expect_op(&mut c, "meta").await;
    let first = expect_op(&mut c, "meta").await;
    let second = expect_op(&mut c, "meta").await;
    assert_eq!(first.topic.as_deref(), Some(a.as_str()));
    assert_eq!(first.from.as_deref(), Some("bob"));
    assert_eq!(first.ex.get("members"), Some(&json!(["dan", "bob"])));
    assert_eq!(second.topic.as_deref(), Some(b.as_str()));
    assert_eq!(second.ex.get("members"), Some(&json!(["dan", "bob"])));
    assert_eq!(second.ex_str("description"), Some("kept"));
    assert_eq!(
        second.ex.get("acl"),
        Some(&json!([["dan", ["owner"]], ["*", ["read"]]]))
    );
    assert_alive(&mut c).await;
    server.stop().await;
}

#[tokio::test]
async fn slow_member_is_cut_and_others_get_everything() {
    let server = TestServer::start_with(|c| {
        c.limits.max_sendq_packets = 16;
        c.limits.write_timeout_ms = 2000;
        c.limits.packets_per_second = 100_000;
        c.limits.packet_burst = 100_000;
    })
    .await;
    let (mut dan, mut bob, mut amy) = three(&server).await;
    let topic = create(&mut dan, "firehose").await;
    join(&mut bob, &topic).await;
    join(&mut amy, &topic).await;
    // Drain the join announcements.
    expect_op(&mut dan, "join").await;
    expect_op(&mut dan, "join").await;
    expect_op(&mut bob, "join").await;
    // bob never reads from here on. dan sends large messages; amy reads all.
    let body = "m".repeat(16 * 1024);
    const N: usize = 1500;
    let reader = tokio::spawn(async move {
        let mut got = 0;
        while got < N {
            let p = amy.recv_timeout(WAIT).await.unwrap();
            assert_eq!(p.op, "send");
            assert_eq!(p.ex.get("n").and_then(Value::as_u64), Some(got as u64));
            got += 1;
        }
        got
    });
    send_numbered(&mut dan, &topic, &body, N).await;
    assert_eq!(reader.await.unwrap(), N);
    // bob was cut before all N arrived.
    expect_cut_before_all(&mut bob, "send", N).await;
    server.stop().await;
}

/// Sends `n` messages of `body` to `topic`, numbered in `ex.n`, each acked.
async fn send_numbered(c: &mut Client, topic: &str, body: &str, n: usize) {
    for i in 0..n {
        let ack = request(c, on("send", topic).with("data", body).with("n", i)).await;
        assert_eq!(ack.op, "ack");
    }
}

/// Reads what reached a client that stopped reading while `sent` packets
/// of `op` were made for it: fewer than `sent` (printed), then the end (a
/// `bye`, which must be the slow-consumer one, or the stream cut mid-write).
async fn expect_cut_before_all(c: &mut Client, op: &str, sent: usize) {
    let mut received = 0;
    loop {
        match c.recv_timeout(WAIT).await {
            Ok(p) if p.op == op => received += 1,
            Ok(p) => {
                assert_eq!(p.op, "bye", "{p:?}");
                assert_eq!(code(&p), Some("session/sendq-exceeded"));
            }
            Err(_) => break,
        }
    }
    eprintln!("got {received} of {sent} {op} packets before the cut");
    assert!(received < sent, "got all {sent}: never cut");
}

/// A server whose queues hold `max_sendq_bytes`, with no packet rate to
/// speak of, and dan, bob and amy logged in.
async fn sendq_server(
    max_sendq_bytes: usize,
    history: bool,
) -> (TestServer, (Client, Client, Client)) {
    let server = TestServer::start_with(|c| {
        c.limits.max_sendq_bytes = max_sendq_bytes;
        c.limits.packets_per_second = 100_000;
        c.limits.packet_burst = 100_000;
        c.history.enabled = history;
    })
    .await;
    let users = three(&server).await;
    (server, users)
}

/// Large messages fill a member's queue by bytes long before its packet
/// bound: a member that stops reading while 60 KB messages arrive is cut
/// once the default `max_sendq_bytes` (16 MiB, plus what the sockets hold)
/// is queued, not at 4,096 messages (240 MB).
#[tokio::test]
async fn a_member_not_reading_large_messages_is_cut_by_bytes() {
    const N: usize = 800;
    let (server, (mut dan, mut bob, _amy)) =
        sendq_server(Limits::default().max_sendq_bytes, false).await;
    let topic = create(&mut dan, "big").await;
    join(&mut bob, &topic).await;
    expect_op(&mut dan, "join").await;
    // bob reads nothing from here on, until dan is done.
    send_numbered(&mut dan, &topic, &"m".repeat(60_000), N).await;
    expect_cut_before_all(&mut bob, "send", N).await;
    server.stop().await;
}

#[tokio::test]
async fn find_topics_and_users() {
    let server = TestServer::start().await;
    let (mut dan, mut bob, _amy) = three(&server).await;
    for name in ["rust", "rustaceans", "python", "hidden-rust"] {
        create(&mut dan, name).await;
    }
    let hidden = request(
        &mut dan,
        Packet::request("join").with("name", "hidden-rust"),
    )
    .await;
    let hidden = hidden.topic.unwrap();
    acl(&mut dan, &hidden, "*", &[], &["read"]).await;
    request(&mut dan, Packet::request("meta").with("x", 1)).await;
    let rust = request(&mut dan, Packet::request("join").with("name", "rust"))
        .await
        .topic
        .unwrap();
    request(
        &mut dan,
        on("meta", &rust)
            .with("lang", "en")
            .with("description", "the language"),
    )
    .await;

    // bob sees only what he may read; results come by name, a page at a time.
    let p = request(&mut bob, Packet::request("find").with("name", "RUST")).await;
    assert_eq!(p.op, "found");
    let names: Vec<&str> = p.ex["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["rust", "rustaceans"]);
    assert_eq!(p.ex["topics"][0]["description"], "the language");
    assert_eq!(p.ex["topics"][0]["members"], 1);
    assert!(p.ex.get("cursor").is_none());
    let p = request(
        &mut dan,
        Packet::request("find")
            .with("name", "rust")
            .with("limit", 2),
    )
    .await;
    let names: Vec<&str> = p.ex["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hidden-rust", "rust"]);
    let cursor = p.ex_str("cursor").unwrap().to_owned();
    let p = request(
        &mut dan,
        Packet::request("find")
            .with("name", "rust")
            .with("cursor", cursor),
    )
    .await;
    assert_eq!(p.ex["topics"][0]["name"], "rustaceans");
    let p = request(
        &mut bob,
        Packet::request("find").with("meta", json!({"lang": "en"})),
    )
    .await;
    assert_eq!(p.ex["topics"].as_array().unwrap().len(), 1);

    let p = request(
        &mut bob,
        Packet::request("find")
            .with("kind", "users")
            .with("name", "a"),
    )
    .await;
    assert_eq!(p.ex.get("users"), Some(&json!(["amy", "dan"])));
    for kind in [json!("rooms"), json!(5), Value::Null] {
        let p = request(&mut bob, Packet::request("find").with("kind", kind)).await;
        assert_eq!(code(&p), Some("request/invalid"));
    }
    server.stop().await;
}

#[tokio::test]
async fn the_server_acl_says_who_creates_topics() {
    let server = TestServer::start().await;
    let (mut dan, mut bob, _amy) = three(&server).await;
    let data = server.dir.path().join("data");
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tenthbitd"))
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    // Everyone may create by default.
    assert!(cli(&["admin", "show"]).lines().any(|l| l == "*\tcreate"));
    create(&mut bob, "first").await;
    cli(&["admin", "revoke", "*", "create"]);
    let p = request(&mut bob, Packet::request("create").with("name", "second")).await;
    assert_eq!(code(&p), Some("acl/denied"));
    cli(&["admin", "grant", "bob", "create"]);
    create(&mut bob, "second").await;
    let p = request(&mut dan, Packet::request("create").with("name", "third")).await;
    assert_eq!(code(&p), Some("acl/denied"));
    cli(&["admin", "grant", "dan"]);
    create(&mut dan, "third").await;
    let shown = cli(&["admin", "show"]);
    assert!(shown.lines().any(|l| l == "dan\tadmin"), "{shown}");
    assert!(shown.lines().any(|l| l == "bob\tcreate"), "{shown}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tenthbitd"))
        .args(["admin", "grant", "bob", "owner", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("owner"));
    server.stop().await;
}

#[tokio::test]
async fn a_rename_with_bad_metadata_changes_nothing() {
    let server = TestServer::start_with(|c| c.limits.max_meta_keys = 2).await;
    let (mut dan, _bob, _amy) = three(&server).await;
    let topic = create(&mut dan, "before").await;
    let p = request(
        &mut dan,
        on("meta", &topic)
            .with("name", "after")
            .with("a", 1)
            .with("b", 2)
            .with("c", 3),
    )
    .await;
    assert_eq!(code(&p), Some("meta/invalid"));
    let p = request(&mut dan, on("meta", &topic)).await;
    assert_eq!(p.ex_str("name"), Some("before"));
    assert!(p.ex.get("a").is_none());
    server.stop().await;
}

/// A `send` exactly at the 4,096-byte line limit is refused: the relay,
/// with the id, ts, topic and from the server adds, would not fit.
async fn send_at_the_limit_is_refused(c: &mut Client, topic: &str, id: &str) {
    let shell = on("send", topic).with_id(id).with("data", "");
    let data = "x".repeat(4096 - (shell.to_line().len() - 1));
    let req = on("send", topic).with_id(id).with("data", data.as_str());
    assert_eq!(req.to_line().len() - 1, 4096);
    let p = request(c, req).await;
    assert_eq!(code(&p), Some("packet/too-large"));
    assert_eq!(p.ex_str("for"), Some(id));
}

#[tokio::test]
async fn a_message_whose_relay_would_not_fit_a_line_is_refused() {
    let server = TestServer::start_with(|c| c.limits.max_line_bytes = 4096).await;
    let (mut dan, mut bob, _amy) = three(&server).await;
    let topic = create(&mut dan, "big").await;
    join(&mut bob, &topic).await;
    expect_op(&mut dan, "join").await;
    send_at_the_limit_is_refused(&mut dan, &topic, "r1").await;
    // A message that fits is relayed whole (a topic that keeps history
    // also keeps room for a history answer's envelope: 1 KiB).
    let data = "x".repeat(4096 - 1300);
    assert_eq!(
        request(&mut dan, on("send", &topic).with("data", data.as_str()))
            .await
            .op,
        "ack"
    );
    assert_eq!(
        expect_op(&mut bob, "send").await.ex_str("data"),
        Some(data.as_str())
    );
    server.stop().await;
}

#[tokio::test]
async fn member_and_topic_limits() {
    let server = TestServer::start_with(|c| {
        c.limits.max_members_per_topic = 2;
        c.limits.max_topics_per_account = 2;
    })
    .await;
    let (mut dan, mut bob, mut amy) = three(&server).await;
    let first = create(&mut dan, "first").await;
    assert_eq!(join(&mut bob, &first).await.op, "meta");
    // Two members: full.
    assert_eq!(code(&join(&mut amy, &first).await), Some("topic/full"));
    // dan is in "first"; one more topic is his limit.
    create(&mut dan, "second").await;
    let p = request(&mut dan, Packet::request("create").with("name", "third")).await;
    assert_eq!(code(&p), Some("account/too-many-topics"));
    let third = create(&mut amy, "third").await;
    assert_eq!(
        code(&join(&mut dan, &third).await),
        Some("account/too-many-topics")
    );
    // Leaving makes room on both counts.
    request(&mut bob, on("leave", &first)).await;
    assert_eq!(join(&mut amy, &first).await.op, "meta");
    request(&mut dan, on("leave", &first)).await;
    assert_eq!(join(&mut dan, &third).await.op, "meta");
    server.stop().await;
}

#[tokio::test]
async fn a_message_not_kept_is_relayed_as_sent() {
    // Not kept: the relay carries `ex` as the sender wrote it.
    let server = TestServer::start_with(|c| {
        c.history.enabled = false;
        c.limits.max_line_bytes = 4096;
    })
    .await;
    let (mut dan, mut bob, _amy) = three(&server).await;
    let topic = create(&mut dan, "plain").await;
    join(&mut bob, &topic).await;
    expect_op(&mut dan, "join").await;

    // Spacing, escapes, nesting and key order: the same JSON arrives.
    let line = format!(
        r#"{{"op":"send","id":"r1","topic":"{topic}","ex":{{ "b" : [1, 2.5, {{"x":null}}], "a":"caf\u00e9 \"q\"" }}}}"#
    );
    bob.send_raw(format!("{line}\n").as_bytes()).await.unwrap();
    let ack = expect_op(&mut bob, "ack").await;
    assert_eq!(ack.ex_str("for"), Some("r1"));
    let got = expect_op(&mut dan, "send").await;
    assert_eq!(got.from.as_deref(), Some("bob"));
    assert_eq!(got.topic.as_deref(), Some(topic.as_str()));
    assert_eq!(
        Value::Object(got.ex.clone()),
        json!({"b": [1, 2.5, {"x": null}], "a": "café \"q\""})
    );
    assert_eq!(got.ex.keys().collect::<Vec<_>>(), ["b", "a"]);
    assert_eq!(ack.ex_str("id"), got.id.as_deref());
    assert_eq!(ack.ex.get("ts").and_then(Value::as_i64), got.ts);

    // `for` is still the server's.
    let msg = on("send", &topic).with("for", "spoof").with("data", "hi");
    assert_eq!(request(&mut bob, msg).await.op, "ack");
    let got = expect_op(&mut dan, "send").await;
    assert_eq!(Value::Object(got.ex), json!({"data": "hi"}));

    // An empty `ex` is left out, as on every packet.
    assert_eq!(
        request(&mut bob, on("send", &topic).with_id("r2")).await.op,
        "ack"
    );
    let got = expect_op(&mut dan, "send").await;
    assert!(got.ex.is_empty());

    // A lone surrogate in `ex` is malformed, and nothing is relayed.
    let bad = format!(r#"{{"op":"send","id":"r3","topic":"{topic}","ex":{{"a":"\udc00"}}}}"#);
    bob.send_raw(format!("{bad}\n").as_bytes()).await.unwrap();
    let e = expect_error(&mut bob, "packet/malformed").await;
    assert_eq!(e.ex_str("for"), Some("r3"));

    // Written as sent, the relay must still fit a line.
    send_at_the_limit_is_refused(&mut bob, &topic, "r4").await;
    // Neither refused message reached dan: his next packet is the pong.
    dan.send(&Packet::request("ping").with_id("p1"))
        .await
        .unwrap();
    assert_eq!(expect_op(&mut dan, "pong").await.ex_str("for"), Some("p1"));
    server.stop().await;
}

/// `dan` creates a topic that keeps no history ("plain") and one that
/// does ("kept"); `bob` joins both. Returns their ids.
async fn plain_and_kept(dan: &mut Client, bob: &mut Client) -> (String, String) {
    let plain = request(
        dan,
        Packet::request("create")
            .with("name", "plain")
            .with("history", false),
    )
    .await
    .topic
    .unwrap();
    let kept = create(dan, "kept").await;
    for t in [&plain, &kept] {
        join(bob, t).await;
        expect_op(dan, "join").await;
    }
    (plain, kept)
}

#[tokio::test]
async fn a_burst_of_sends_keeps_request_and_relay_order() {
    // One write holds sends to a topic not kept and to a kept one, a
    // refused send and a ping: the sender's replies come in request order
    // and each member sees its topics' messages in the order sent.
    let server = TestServer::start().await;
    let (mut dan, mut bob, mut amy) = three(&server).await;
    let (plain, kept) = plain_and_kept(&mut dan, &mut bob).await;
    join(&mut amy, &plain).await;
    expect_op(&mut dan, "join").await;
    expect_op(&mut bob, "join").await;

    let script = [
        ("p1", plain.as_str()),
        ("p2", plain.as_str()),
        ("k1", kept.as_str()),
        ("p3", plain.as_str()),
        ("x1", "no-such-topic"),
        ("k2", kept.as_str()),
        ("p4", plain.as_str()),
        ("p5", plain.as_str()),
    ];
    let mut burst = Vec::new();
    for (id, topic) in script {
        let line = on("send", topic).with_id(id).with("data", id).to_line();
        burst.extend_from_slice(&line);
    }
    burst.extend_from_slice(&Packet::request("ping").with_id("z").to_line());
    bob.send_raw(&burst).await.unwrap();

    let mut acked = Vec::new();
    for (id, _) in script {
        let reply = bob
            .recv_timeout(std::time::Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(reply.ex_str("for"), Some(id), "{reply:?}");
        let want = if id == "x1" { "error" } else { "ack" };
        assert_eq!(reply.op, want, "{reply:?}");
        if want == "ack" {
            acked.push((id, reply.ex_str("id").unwrap().to_owned()));
        }
    }
    assert_eq!(expect_op(&mut bob, "pong").await.ex_str("for"), Some("z"));

    // dan is in both topics: everything, in order, with the acked ids.
    for (id, message_id) in &acked {
        let got = expect_op(&mut dan, "send").await;
        assert_eq!(got.ex_str("data"), Some(*id));
        assert_eq!(got.id.as_deref(), Some(message_id.as_str()));
    }
    // amy is only in the plain topic.
    for (id, _) in acked.iter().filter(|(id, _)| id.starts_with('p')) {
        let got = expect_op(&mut amy, "send").await;
        assert_eq!(got.ex_str("data"), Some(*id));
    }
    for c in [&mut dan, &mut amy] {
        c.send(&Packet::request("ping").with_id("after"))
            .await
            .unwrap();
        assert_eq!(expect_op(c, "pong").await.ex_str("for"), Some("after"));
    }
    server.stop().await;
}

#[tokio::test]
async fn a_send_without_an_id_gets_no_ack_but_its_refusal() {
    // One write: sends without ids to a topic not kept and to a kept one,
    // a refused one, then a send with an id and a ping. The sender's only
    // replies are the refusal (without `for`), that one `ack` and the
    // `pong`, in that order; the members get every message, in order.
    let server = TestServer::start().await;
    let (mut dan, mut bob, _amy) = three(&server).await;
    let (plain, kept) = plain_and_kept(&mut dan, &mut bob).await;
    let script = [
        ("a", plain.as_str()),
        ("b", plain.as_str()),
        ("c", kept.as_str()),
        ("d", "no-such-topic"),
        ("e", plain.as_str()),
        ("f", kept.as_str()),
    ];
    let mut burst = Vec::new();
    for (data, topic) in script {
        burst.extend_from_slice(&on("send", topic).with("data", data).to_line());
    }
    let named = on("send", &plain).with_id("g1").with("data", "g");
    burst.extend_from_slice(&named.to_line());
    burst.extend_from_slice(&Packet::request("ping").with_id("z").to_line());
    bob.send_raw(&burst).await.unwrap();

    let wait = std::time::Duration::from_secs(10);
    let refused = bob.recv_timeout(wait).await.unwrap();
    assert_eq!(refused.op, "error", "{refused:?}");
    assert_eq!(code(&refused), Some("topic/not-found"));
    assert_eq!(refused.ex_str("for"), None);
    let ack = bob.recv_timeout(wait).await.unwrap();
    assert_eq!((ack.op.as_str(), ack.ex_str("for")), ("ack", Some("g1")));
    let pong = bob.recv_timeout(wait).await.unwrap();
    assert_eq!((pong.op.as_str(), pong.ex_str("for")), ("pong", Some("z")));

    for want in ["a", "b", "c", "e", "f", "g"] {
        let got = expect_op(&mut dan, "send").await;
        assert_eq!(got.ex_str("data"), Some(want), "{got:?}");
        if want == "g" {
            assert_eq!(got.id.as_deref(), ack.ex_str("id"));
        }
    }
    // Nothing else came to the sender meanwhile: its next reply is the
    // next request's.
    bob.send(&Packet::request("ping").with_id("after"))
        .await
        .unwrap();
    let next = bob.recv_timeout(wait).await.unwrap();
    assert_eq!(
        (next.op.as_str(), next.ex_str("for")),
        ("pong", Some("after"))
    );
    server.stop().await;
}

#[tokio::test]
async fn a_kept_message_reaches_members_before_its_senders_next_act() {
    // bob pipelines a kept message and a `leave`: the others see the
    // message, then the leave, never the other way round.
    let server = TestServer::start().await;
    let (mut dan, mut bob, mut amy) = three(&server).await;
    let topic = create(&mut dan, "kept").await;
    join(&mut bob, &topic).await;
    expect_op(&mut dan, "join").await;
    join(&mut amy, &topic).await;
    expect_op(&mut dan, "join").await;
    expect_op(&mut bob, "join").await;
    let mut burst = on("send", &topic)
        .with_id("m1")
        .with("data", "last words")
        .to_line()
        .to_vec();
    burst.extend_from_slice(&on("leave", &topic).with_id("l1").to_line());
    bob.send_raw(&burst).await.unwrap();
    assert_eq!(expect_op(&mut bob, "ack").await.ex_str("for"), Some("m1"));
    assert_eq!(expect_op(&mut bob, "ack").await.ex_str("for"), Some("l1"));
    for c in [&mut dan, &mut amy] {
        let first = c
            .recv_timeout(std::time::Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(first.op, "send", "{first:?}");
        assert_eq!(first.ex_str("data"), Some("last words"));
        let second = expect_op(c, "leave").await;
        assert_eq!(second.from.as_deref(), Some("bob"));
    }
    server.stop().await;
}
