//! Search: words, phrases and filters over the topics one may read, newest
//! first with a cursor; edits, redactions, binary topics, restarts, the
//! read ACL and the limits.

mod common;

use common::*;
use serde_json::{Value, json};
use tenthbit::client::Client;
use tenthbit::proto::Packet;

async fn create(c: &mut Client, name: &str) -> String {
    let p = request(c, Packet::request("create").with("name", name)).await;
    assert_eq!(p.op, "meta", "{p:?}");
    p.topic.unwrap()
}

async fn say(c: &mut Client, topic: &str, body: &str) -> (String, i64) {
    let ack = request(c, on("send", topic).with("body", body)).await;
    assert_eq!(ack.op, "ack", "{ack:?}");
    let ts = ack.ex["ts"].as_i64().unwrap();
    // The filters are by millisecond, and a message is kept in well under
    // one: the next is sent in a later millisecond, so that `before` and
    // `after` a message's `ts` part the messages as sent.
    while tenthbit::proto::id::now_ms() <= ts {
        tokio::task::yield_now().await;
    }
    (ack.ex_str("id").unwrap().to_owned(), ts)
}

async fn search(c: &mut Client, p: Packet) -> (Vec<String>, Option<String>, Packet) {
    let answer = request(c, p).await;
    assert_eq!(answer.op, "search", "{answer:?}");
    let ids = answer.ex["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    let cursor = answer.ex_str("cursor").map(str::to_owned);
    (ids, cursor, answer)
}

fn q(text: &str) -> Packet {
    Packet::request("search").with("q", text)
}

#[tokio::test]
async fn finds_words_and_phrases_with_filters_and_pages() {
    let server = TestServer::start().await;
    server.register("dan", "hellosecret").await;
    server.register("bob", "hellosecret").await;
    let mut dan = server.login("dan", "hellosecret").await;
    let mut bob = server.login("bob", "hellosecret").await;
    let lobby = create(&mut dan, "lobby").await;
    let ops = create(&mut bob, "ops").await;
    assert_eq!(request(&mut dan, on("join", &ops)).await.op, "meta");
    let (m1, _) = say(&mut dan, &lobby, "the deploy went fine").await;
    let (m2, t2) = say(&mut bob, &ops, "deploy failed, fine then").await;
    let (m3, _) = say(&mut dan, &ops, "Déploy again? it went fine").await;
    let (_m4, _) = say(&mut dan, &lobby, "unrelated chatter").await;

    let (ids, cursor, answer) = search(&mut dan, q("deploy fine")).await;
    assert_eq!(ids, [m3.clone(), m2.clone(), m1.clone()]);
    assert_eq!(cursor, None);
    let first = &answer.ex["messages"][0];
    assert_eq!(first["op"], "send");
    assert_eq!(first["from"], "dan");
    assert_eq!(first["topic"], ops.as_str());
    assert_eq!(first["ex"]["body"], "Déploy again? it went fine");

    let (ids, ..) = search(&mut dan, q("\"went fine\"")).await;
    assert_eq!(ids, [m3.clone(), m1.clone()]);
    let (ids, ..) = search(&mut dan, on("search", "ops").with("q", "deploy")).await;
    assert_eq!(ids, [m3.clone(), m2.clone()]);
    let (ids, ..) = search(&mut dan, q("deploy").with("from", "bob")).await;
    assert_eq!(ids, [m2.as_str()]);
    let (ids, ..) = search(&mut dan, q("deploy").with("from", "nobody")).await;
    assert!(ids.is_empty());
    let (ids, ..) = search(&mut dan, q("deploy").with("before", t2)).await;
    assert_eq!(ids, [m1.as_str()]);
    let (ids, ..) = search(&mut dan, q("deploy").with("after", t2)).await;
    assert_eq!(ids, [m3.clone(), m2.clone()]);

    // Pages of one, by cursor.
    let (ids, cursor, _) = search(&mut dan, q("fine").with("limit", 2)).await;
    assert_eq!(ids, [m3.clone(), m2.clone()]);
    let cursor = cursor.expect("a cursor");
    let (ids, _, _) = search(&mut dan, q("fine").with("limit", 2).with("cursor", cursor)).await;
    assert_eq!(ids, [m1.as_str()]);

    // A result opens in history: the messages around it.
    let around = request(&mut dan, on("history", &ops).with("after", m2.as_str())).await;
    assert_eq!(around.ex["messages"][0]["id"], m3.as_str());

    // An edit is found by its new text; a redaction by nothing.
    let ack = request(
        &mut dan,
        on("edit", &lobby)
            .with("id", m1.as_str())
            .with("body", "rollout ok"),
    )
    .await;
    assert_eq!(ack.op, "ack", "{ack:?}");
    let (ids, _, answer) = search(&mut dan, q("rollout")).await;
    assert_eq!(ids, [m1.as_str()]);
    assert!(answer.ex["messages"][0]["ex"]["edited"].is_i64());
    let (ids, ..) = search(&mut dan, q("deploy")).await;
    assert_eq!(ids, [m3.clone(), m2.clone()]);
    let ack = request(&mut bob, on("redact", &ops).with("id", m2.as_str())).await;
    assert_eq!(ack.op, "ack", "{ack:?}");
    let (ids, ..) = search(&mut dan, q("deploy")).await;
    assert_eq!(ids, [m3.as_str()]);
    drop((dan, bob));

    // The index survives a restart.
    let server = server.restart(|_| {}).await;
    let mut dan = server.client().await;
    assert_eq!(
        request(&mut dan, password_auth("dan", "hellosecret"))
            .await
            .op,
        "ack"
    );
    let (ids, ..) = search(&mut dan, q("fine")).await;
    assert_eq!(ids, [m3]);
    let (ids, ..) = search(&mut dan, q("rollout")).await;
    assert_eq!(ids, [m1]);
    server.stop().await;
}

#[tokio::test]
async fn only_readable_topics_and_never_binary_ones() {
    let server = TestServer::start().await;
    server.register("dan", "hellosecret").await;
    server.register("eve", "hellosecret").await;
    let mut dan = server.login("dan", "hellosecret").await;
    let mut eve = server.login("eve", "hellosecret").await;
    let secret = create(&mut dan, "secret").await;
    let ack = request(
        &mut dan,
        on("acl", &secret)
            .with("subject", "*")
            .with("revoke", json!(["read"])),
    )
    .await;
    assert_eq!(ack.op, "ack", "{ack:?}");
    let (hidden, _) = say(&mut dan, &secret, "launch codes").await;
    let p = request(
        &mut dan,
        Packet::request("create")
            .with("name", "sealed")
            .with("format", "binary"),
    )
    .await;
    let sealed = p.topic.unwrap();
    say(&mut dan, &sealed, "launch ciphertext").await;
    let open = create(&mut dan, "open").await;
    let (visible, _) = say(&mut dan, &open, "launch party").await;

    let p = request(&mut eve, on("search", &secret).with("q", "launch")).await;
    assert_eq!(p.ex_str("code"), Some("acl/denied"), "{p:?}");
    let (ids, ..) = search(&mut eve, q("launch")).await;
    assert_eq!(ids, [visible.as_str()]);
    // Its owner finds the secret, but nothing in the binary topic.
    let (ids, ..) = search(&mut dan, q("launch")).await;
    assert_eq!(ids, [visible, hidden]);
    let (ids, ..) = search(&mut dan, on("search", &sealed).with("q", "ciphertext")).await;
    assert!(ids.is_empty());
    let (ids, ..) = search(&mut dan, q("ciphertext")).await;
    assert!(ids.is_empty());

    let p = request(&mut dan, q("  \"\" ")).await;
    assert_eq!(p.ex_str("code"), Some("request/invalid"), "{p:?}");
    let p = request(&mut dan, q("x").with("cursor", "not-a-cursor")).await;
    assert_eq!(p.ex_str("code"), Some("request/invalid"), "{p:?}");
    let p = request(&mut dan, q(&"w".repeat(257))).await;
    assert_eq!(p.ex_str("code"), Some("request/invalid"), "{p:?}");
    let p = request(&mut dan, q("x").with("before", "yesterday")).await;
    assert_eq!(p.ex_str("code"), Some("request/invalid"), "{p:?}");
    let mut anon = server.client().await;
    let p = request(&mut anon, q("launch")).await;
    assert_eq!(p.ex_str("code"), Some("auth/required"), "{p:?}");
    server.stop().await;
}

#[tokio::test]
async fn searches_are_rate_limited_like_any_packet() {
    let server = TestServer::start_with(|c| {
        c.limits.packets_per_second = 1;
        c.limits.packet_burst = 3;
    })
    .await;
    server.register("dan", "hellosecret").await;
    let mut dan = server.login("dan", "hellosecret").await;
    let mut batch = String::new();
    for i in 0..4 {
        batch.push_str(&format!(
            "{{\"id\":\"s{i}\",\"op\":\"search\",\"ex\":{{\"q\":\"anything\"}}}}\n"
        ));
    }
    dan.send_raw(batch.as_bytes()).await.unwrap();
    // Login took one token of three.
    for i in 0..2 {
        let p = expect_op(&mut dan, "search").await;
        assert_eq!(p.ex_str("for"), Some(format!("s{i}").as_str()));
        assert_eq!(p.ex["messages"], Value::Array(Vec::new()));
    }
    for i in 2..4 {
        let p = expect_error(&mut dan, "rate/limited").await;
        assert_eq!(p.ex_str("for"), Some(format!("s{i}").as_str()));
    }
    server.stop().await;
}

/// Search and `find` of users read on the read-only connection: they are
/// answered while the store's commit thread is busy, and do not hold it.
/// (A search does wait for the search pass to reach what the log had
/// synced, and the pass runs on the commit thread: the first search, before
/// the hold, is what lets the second go by without it.)
#[tokio::test]
async fn long_reads_do_not_wait_for_the_commit_thread() {
    let server = TestServer::start().await;
    server.register("dan", "hellosecret").await;
    let mut dan = server.login("dan", "hellosecret").await;
    let topic = create(&mut dan, "reads").await;
    say(&mut dan, &topic, "a needle in the hay").await;
    let (ids, _, _) = search(&mut dan, q("needle")).await;
    assert_eq!(ids.len(), 1, "the pass has reached the needle");
    {
        // The commit thread is held: a job queued now runs after it.
        let store = server.handle.store();
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (started, running) = tokio::sync::oneshot::channel::<()>();
        let mut hold = std::pin::pin!(store.call(move |_| {
            let _ = started.send(());
            let _ = held.recv();
            Ok(())
        }));
        // The hold has started (not merely been queued): the reads below
        // are answered while the thread is busy, or the test proves nothing.
        tokio::select! {
            r = running => r.expect("the hold started"),
            r = &mut hold => panic!("the hold ended before its release: {r:?}"),
        }
        let (ids, _, _) = search(&mut dan, q("needle")).await;
        assert_eq!(ids.len(), 1);
        let found = request(&mut dan, Packet::request("find").with("kind", "users")).await;
        assert_eq!(found.op, "found", "{found:?}");
        assert_eq!(found.ex["users"], json!(["dan"]));
        release.send(()).expect("the hold is running");
        hold.await.expect("released");
    }
    server.stop().await;
}

/// Control characters in a query separate words (a NUL once made SQLite
/// fail the query: `server/internal`); a query of nothing else has no word.
#[tokio::test]
async fn control_characters_in_a_query_separate_words() {
    let server = TestServer::start().await;
    let (mut dan, topic) = server.with_topic("dan", "s").await;
    let (id, _) = say(&mut dan, &topic, "hello world").await;
    let (found, _, _) = search(&mut dan, q("hello\u{0}world")).await;
    assert_eq!(found, [id]);
    let p = request(&mut dan, q("\u{0}")).await;
    assert_eq!(p.ex_str("code"), Some("request/invalid"), "{p:?}");
    server.stop().await;
}

/// A term of punctuation alone holds no word: the index sees nothing there,
/// so it must not make a query find nothing. Between words it is left out;
/// a query of nothing else has no word (`request/invalid`).
#[tokio::test]
async fn punctuation_alone_is_not_a_word() {
    let server = TestServer::start().await;
    let (mut dan, topic) = server.with_topic("dan", "s").await;
    let (id, _) = say(&mut dan, &topic, "deploy to staging").await;
    let (found, _, _) = search(&mut dan, q("deploy - staging")).await;
    assert_eq!(found, [id.as_str()]);
    let (found, _, _) = search(&mut dan, q("deploy \"?!\" staging :)")).await;
    assert_eq!(found, [id]);
    for nothing in ["?", "- * \"!!\"", "🎉"] {
        let p = request(&mut dan, q(nothing)).await;
        assert_eq!(
            p.ex_str("code"),
            Some("request/invalid"),
            "{nothing}: {p:?}"
        );
    }
    server.stop().await;
}
