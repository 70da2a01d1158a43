//! Topic history: paging both ways by id and by time, the read ACL,
//! per-topic settings, restarts, and retention.

mod common;

use common::*;
use serde_json::{Value, json};
use tenthbit::client::Client;
use tenthbit::proto::Packet;

fn on(op: &str, topic: &str) -> Packet {
    let mut p = Packet::request(op);
    p.topic = Some(topic.to_owned());
    p
}

fn ids(p: &Packet) -> Vec<String> {
    p.ex.get("messages")
        .and_then(Value::as_array)
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn setup(server: &TestServer) -> (Client, Client, String, Vec<(String, i64)>) {
    server.register("dan", "hellosecret").await;
    server.register("bob", "hellosecret").await;
    let mut dan = server.login("dan", "hellosecret").await;
    let bob = server.login("bob", "hellosecret").await;
    let p = request(&mut dan, Packet::request("create").with("name", "log")).await;
    let topic = p.topic.unwrap();
    let mut sent = Vec::new();
    for n in 0..30 {
        let ack = request(
            &mut dan,
            on("send", &topic).with("data", format!("msg {n}")),
        )
        .await;
        assert_eq!(ack.op, "ack");
        sent.push((
            ack.ex_str("id").unwrap().to_owned(),
            ack.ex.get("ts").and_then(Value::as_i64).unwrap(),
        ));
    }
    (dan, bob, topic, sent)
}

#[tokio::test]
async fn pages_backwards_and_forwards() {
    let server = TestServer::start().await;
    let (mut dan, _bob, topic, sent) = setup(&server).await;
    let all: Vec<String> = sent.iter().map(|(id, _)| id.clone()).collect();

    let latest = request(&mut dan, on("history", &topic).with("limit", 10)).await;
    assert_eq!(latest.op, "history");
    assert_eq!(latest.topic.as_deref(), Some(topic.as_str()));
    assert_eq!(ids(&latest), all[20..]);
    assert_eq!(latest.ex.get("more"), Some(&json!(true)));
    let m = &latest.ex["messages"][0];
    assert_eq!(m["op"], "send");
    assert_eq!(m["from"], "dan");
    assert_eq!(m["topic"], topic.as_str());
    assert_eq!(m["ex"]["data"], "msg 20");

    let older = request(
        &mut dan,
        on("history", &topic)
            .with("before", all[20].as_str())
            .with("limit", 15),
    )
    .await;
    assert_eq!(ids(&older), all[5..20]);
    let oldest = request(
        &mut dan,
        on("history", &topic)
            .with("before", all[5].as_str())
            .with("limit", 15),
    )
    .await;
    assert_eq!(ids(&oldest), all[..5]);
    assert_eq!(oldest.ex.get("more"), Some(&json!(false)));

    let newer = request(
        &mut dan,
        on("history", &topic)
            .with("after", all[24].as_str())
            .with("limit", 3),
    )
    .await;
    assert_eq!(ids(&newer), all[25..28]);
    assert_eq!(newer.ex.get("more"), Some(&json!(true)));
    let between = request(
        &mut dan,
        on("history", &topic)
            .with("after", all[2].as_str())
            .with("before", all[6].as_str()),
    )
    .await;
    assert_eq!(ids(&between), all[3..6]);

    // By time: everything after the last message's time is nothing; before
    // the first message's time is nothing.
    let (_, last_ts) = sent[29];
    let none = request(&mut dan, on("history", &topic).with("after", last_ts)).await;
    assert!(ids(&none).is_empty());
    let (_, first_ts) = sent[0];
    let none = request(&mut dan, on("history", &topic).with("before", first_ts)).await;
    assert!(ids(&none).is_empty());
    let p = request(&mut dan, on("history", &topic).with("before", json!([1]))).await;
    assert_eq!(p.ex_str("code"), Some("request/invalid"));
    server.stop().await;
}

#[tokio::test]
async fn history_honours_read() {
    let server = TestServer::start().await;
    let (mut dan, mut bob, topic, _) = setup(&server).await;
    // Anyone who may read may page, member or not.
    assert_eq!(request(&mut bob, on("history", &topic)).await.op, "history");
    request(
        &mut dan,
        on("acl", &topic)
            .with("subject", "*")
            .with("revoke", json!(["read"])),
    )
    .await;
    let p = request(&mut bob, on("history", &topic)).await;
    assert_eq!(p.ex_str("code"), Some("acl/denied"));
    server.stop().await;
}

#[tokio::test]
async fn topics_without_history_keep_nothing() {
    let server = TestServer::start().await;
    server.register("dan", "hellosecret").await;
    let mut dan = server.login("dan", "hellosecret").await;
    let p = request(
        &mut dan,
        Packet::request("create")
            .with("name", "ephemeral")
            .with("history", false),
    )
    .await;
    let topic = p.topic.unwrap();
    let ack = request(&mut dan, on("send", &topic).with("data", "gone")).await;
    assert_eq!(ack.op, "ack");
    assert!(ack.ex_str("id").is_some());
    assert!(ids(&request(&mut dan, on("history", &topic)).await).is_empty());
    server.stop().await;

    let off = TestServer::start_with(|c| c.history.enabled = false).await;
    off.register("dan", "hellosecret").await;
    let mut dan = off.login("dan", "hellosecret").await;
    let topic = request(&mut dan, Packet::request("create").with("name", "t"))
        .await
        .topic
        .unwrap();
    request(&mut dan, on("send", &topic).with("data", "gone")).await;
    assert!(ids(&request(&mut dan, on("history", &topic)).await).is_empty());
    off.stop().await;
}

#[tokio::test]
async fn history_survives_restart() {
    let server = TestServer::start().await;
    let (_dan, _bob, topic, sent) = setup(&server).await;
    let server = server.restart(|_| {}).await;
    let mut c = server.login("bob", "hellosecret").await;
    let p = request(&mut c, on("history", &topic).with("limit", 100)).await;
    assert_eq!(
        ids(&p),
        sent.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>()
    );
    server.stop().await;
}

#[tokio::test]
async fn retention_follows_the_topic_override() {
    let server = TestServer::start_with(|c| c.history.prune_interval_ms = 20).await;
    let (mut dan, _bob, topic, sent) = setup(&server).await;
    assert_eq!(
        request(&mut dan, on("meta", &topic).with("history_max_messages", 5))
            .await
            .op,
        "ack"
    );
    // Retention runs on its own timer: ask until it has, within the deadline.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let kept = ids(&request(&mut dan, on("history", &topic).with("limit", 100)).await);
        if kept.len() == 5 {
            assert_eq!(
                kept,
                sent[25..]
                    .iter()
                    .map(|(id, _)| id.clone())
                    .collect::<Vec<_>>()
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention never ran: {} kept",
            kept.len()
        );
        tokio::task::yield_now().await;
    }
    server.stop().await;
}

/// A server that lets a client pipeline hundreds of packets at once, and
/// two of its users logged in: dan and bob.
async fn pipelining_pair() -> (TestServer, Client, Client) {
    let server = TestServer::start_with(|c| {
        c.limits.packets_per_second = 100_000;
        c.limits.packet_burst = 100_000;
    })
    .await;
    server.register("dan", "hellosecret").await;
    server.register("bob", "hellosecret").await;
    let dan = server.login("dan", "hellosecret").await;
    let bob = server.login("bob", "hellosecret").await;
    (server, dan, bob)
}

/// Pipelined sends to a topic that keeps history are committed together but
/// answered in request order, relayed in order, and a reply to anything
/// else (an error, a ping) never overtakes them.
#[tokio::test]
async fn pipelined_sends_keep_their_order() {
    let (server, mut dan, mut bob) = pipelining_pair().await;
    let topic = request(&mut dan, Packet::request("create").with("name", "pipe"))
        .await
        .topic
        .unwrap();
    request(&mut bob, on("join", &topic)).await;
    expect_op(&mut dan, "join").await;

    let mut batch = Vec::new();
    let mut expected = Vec::new();
    for n in 0..300 {
        if n == 150 {
            // Not a member of this one: refused, in its place in the order.
            batch.extend_from_slice(
                &on("send", "00000000-0000-7000-8000-000000000000")
                    .with_id("bad")
                    .to_line(),
            );
            expected.push(("error", "bad".to_owned()));
        }
        batch.extend_from_slice(
            &on("send", &topic)
                .with_id(format!("s{n}"))
                .with("n", n)
                .to_line(),
        );
        expected.push(("ack", format!("s{n}")));
    }
    batch.extend_from_slice(&Packet::request("ping").with_id("last").to_line());
    expected.push(("pong", "last".to_owned()));
    dan.send_raw(&batch).await.unwrap();

    let mut acked = Vec::new();
    for (op, id) in &expected {
        let p = expect_op(&mut dan, op).await;
        assert_eq!(p.ex_str("for"), Some(id.as_str()));
        if *op == "ack" {
            acked.push(p.ex_str("id").unwrap().to_owned());
        }
    }
    for n in 0..300u64 {
        let p = expect_op(&mut bob, "send").await;
        assert_eq!(p.ex.get("n").and_then(Value::as_u64), Some(n));
        assert_eq!(p.id.as_deref(), Some(acked[n as usize].as_str()));
    }
    let kept = ids(&request(
        &mut dan,
        on("history", &topic).with("limit", 200).with("after", 0),
    )
    .await);
    assert_eq!(kept, acked[..200]);
    server.stop().await;
}

/// Kept sends to two topics, alternating within one write, go to the
/// store as runs per topic: each is still answered in request order,
/// relayed in order, and kept in its topic's history in the order sent.
#[tokio::test]
async fn alternating_kept_topics_keep_their_order() {
    let (server, mut dan, mut bob) = pipelining_pair().await;
    let mut topics = Vec::new();
    for name in ["left", "right"] {
        let t = request(&mut dan, Packet::request("create").with("name", name))
            .await
            .topic
            .unwrap();
        request(&mut bob, on("join", &t)).await;
        expect_op(&mut dan, "join").await;
        topics.push(t);
    }
    // Runs of one, of three and of many, to either topic, some with ids.
    let pattern = [0, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0];
    let mut batch = Vec::new();
    let mut sent = Vec::new();
    for n in 0..420usize {
        let t = pattern[n % pattern.len()];
        let mut p = on("send", &topics[t]).with("n", n);
        if n % 3 != 1 {
            p = p.with_id(format!("s{n}"));
        }
        batch.extend_from_slice(&p.to_line());
        sent.push((t, n));
    }
    batch.extend_from_slice(&Packet::request("ping").with_id("last").to_line());
    dan.send_raw(&batch).await.unwrap();

    let mut acked = std::collections::HashMap::new();
    for &(_, n) in sent.iter().filter(|(_, n)| n % 3 != 1) {
        let p = expect_op(&mut dan, "ack").await;
        assert_eq!(p.ex_str("for"), Some(format!("s{n}").as_str()));
        acked.insert(n, p.ex_str("id").unwrap().to_owned());
    }
    assert_eq!(
        expect_op(&mut dan, "pong").await.ex_str("for"),
        Some("last")
    );
    let mut relayed = [Vec::new(), Vec::new()];
    for &(t, n) in &sent {
        let p = expect_op(&mut bob, "send").await;
        assert_eq!(p.topic.as_deref(), Some(topics[t].as_str()));
        assert_eq!(p.ex.get("n").and_then(Value::as_u64), Some(n as u64));
        if let Some(id) = acked.get(&n) {
            assert_eq!(p.id.as_deref(), Some(id.as_str()));
        }
        relayed[t].push(p.id.unwrap());
    }
    for (t, topic) in topics.iter().enumerate() {
        let kept = ids(&request(
            &mut dan,
            on("history", topic).with("limit", 200).with("after", 0),
        )
        .await);
        // A page holds 200 at most: the oldest, after 0.
        let page = relayed[t].len().min(200);
        assert_eq!(kept, relayed[t][..page]);
    }
    server.stop().await;
}

/// A session closed while messages are still committing (here: too many bad
/// sends right behind good ones) still answers everything, in order, then
/// says bye; the good messages are relayed.
#[tokio::test]
async fn closing_with_messages_in_flight_answers_everything() {
    let server = TestServer::start_with(|c| c.limits.max_protocol_errors = 2).await;
    server.register("dan", "hellosecret").await;
    server.register("bob", "hellosecret").await;
    let mut dan = server.login("dan", "hellosecret").await;
    let mut bob = server.login("bob", "hellosecret").await;
    let topic = request(&mut dan, Packet::request("create").with("name", "late"))
        .await
        .topic
        .unwrap();
    request(&mut bob, on("join", &topic)).await;
    expect_op(&mut dan, "join").await;
    let mut batch = Vec::new();
    for n in 0..50 {
        batch.extend_from_slice(
            &on("send", &topic)
                .with_id(format!("s{n}"))
                .with("n", n)
                .to_line(),
        );
    }
    // `send` without a topic: request/invalid, a protocol error; two in a row close.
    batch.extend_from_slice(
        b"{\"id\":\"bad1\",\"op\":\"send\"}\n{\"id\":\"bad2\",\"op\":\"send\"}\n",
    );
    dan.send_raw(&batch).await.unwrap();
    for n in 0..50 {
        let p = expect_op(&mut dan, "ack").await;
        assert_eq!(p.ex_str("for"), Some(format!("s{n}").as_str()));
    }
    for id in ["bad1", "bad2"] {
        let p = expect_error(&mut dan, "request/invalid").await;
        assert_eq!(p.ex_str("for"), Some(id));
    }
    expect_bye(&mut dan, "packet/too-many-errors").await;
    expect_clean_close(&mut dan).await;
    for n in 0..50u64 {
        assert_eq!(
            expect_op(&mut bob, "send")
                .await
                .ex
                .get("n")
                .and_then(Value::as_u64),
            Some(n)
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn numbers_come_back_from_history_as_sent() {
    let server = TestServer::start().await;
    server.register("dan", "hellosecret").await;
    server.register("bob", "hellosecret").await;
    let mut dan = server.login("dan", "hellosecret").await;
    let mut bob = server.login("bob", "hellosecret").await;
    let topic = request(&mut dan, Packet::request("create").with("name", "nums"))
        .await
        .topic
        .unwrap();
    assert_eq!(request(&mut bob, on("join", &topic)).await.op, "meta");
    let huge = format!("9{}", "0123456789".repeat(30).get(1..).unwrap());
    assert_eq!(huge.len(), 300);
    let ex = format!(
        r#"{{"big":18446744073709551617,"huge":{huge},"neg":-{huge},"pi":3.14159265358979323846264338327950288,"small":1e-7}}"#
    );
    // Through the one-pass reader, and (with an escape) the full decoder.
    let lines = [
        format!(r#"{{"op":"send","id":"s1","topic":"{topic}","ex":{ex}}}"#),
        format!(r#"{{"op":"send","id":"s2","topic":"{topic}","ex":{ex},"x":"\u0041"}}"#),
    ];
    for line in &lines {
        dan.send_raw(format!("{line}\n").as_bytes()).await.unwrap();
        let ack = line_with_op(&mut dan, "ack").await;
        assert!(!ack.contains("error"), "{ack}");
        // The relay to the other member carries the text too.
        let relay = line_with_op(&mut bob, "send").await;
        assert!(relay.ends_with(&format!(r#","ex":{ex}}}"#)), "{relay}");
    }
    dan.send_raw(format!(r#"{{"op":"history","id":"h","topic":"{topic}"}}"#).as_bytes())
        .await
        .unwrap();
    dan.send_raw(b"\n").await.unwrap();
    let history = line_with_op(&mut dan, "history").await;
    assert_eq!(
        history.matches(&format!(r#""ex":{ex}"#)).count(),
        2,
        "{history}"
    );
    // And it is still one valid packet, answering the request.
    let p = Packet::decode(history.as_bytes(), 64).unwrap();
    assert_eq!(p.ex_str("for"), Some("h"));
    assert_eq!(ids(&p).len(), 2);
    server.stop().await;
}

/// A kept message must fit one `history` answer, not only a line: one in
/// the line's last KiB (the answer's envelope) is refused when sent, so
/// paging never meets a message it cannot show.
#[tokio::test]
async fn a_kept_message_fits_a_history_answer() {
    let server = TestServer::start_with(|c| c.limits.max_line_bytes = 4096).await;
    let (mut dan, topic) = server.with_topic("dan", "big").await;
    // About 3.5 KB relayed: within the line, not within a history answer.
    let too_big = on("send", &topic).with("body", "x".repeat(3_300));
    let refused = request(&mut dan, too_big).await;
    assert_eq!(
        refused.ex_str("code"),
        Some("packet/too-large"),
        "{refused:?}"
    );
    let fits = on("send", &topic).with("body", "y".repeat(2_700));
    assert_eq!(request(&mut dan, fits).await.op, "ack");
    let page = request(&mut dan, on("history", &topic)).await;
    let messages = page.ex["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 1, "{page:?}");
    server.stop().await;
}
