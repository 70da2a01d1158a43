//! Join requests across the nodes of a mesh (protocol.md 11.22, 17.8): on
//! a line of three nodes, so every packet crosses the middle node, a
//! request made on one end reaches admitters on the other end (and one who
//! logs in on the middle node later) once; an admission, a decline, an
//! expiry and a withdrawal reach the requester's connections and the other
//! admitters on every node once; a node cut off when a request was made
//! learns of it when its link comes back.

#[path = "common/mesh.rs"]
mod cluster;
mod common;

use cluster::Cluster;
use common::*;
use serde_json::json;
use tenthbit::client::Client;
use tenthbit::proto::Packet;

const PW: &str = "hellosecret";
const LINE3: &[(usize, usize)] = &[(0, 1), (1, 2)];

/// The line, with every account registered on node 0: dan owns `club`
/// (members admit newcomers) from node 2, carol is a member on node 1, bob
/// and eve are outsiders. Returns dan (node 2), carol (node 1) and the
/// topic id, once every node holds the same state.
async fn setup(c: &Cluster) -> (Client, Client, String) {
    for name in ["dan", "carol", "bob", "eve"] {
        c.nodes[0].server().register(name, PW).await;
    }
    c.converged(&[0, 1, 2]).await;
    let mut dan = c.nodes[2].server().login("dan", PW).await;
    let p = request(&mut dan, Packet::request("create").with("name", "club")).await;
    let topic = p.topic.expect("topic id");
    c.converged(&[0, 1, 2]).await;
    let mut carol = c.nodes[1].server().login("carol", PW).await;
    assert_eq!(request(&mut carol, on("join", &topic)).await.op, "meta");
    expect_op(&mut dan, "join").await;
    let ack = request(&mut dan, on("meta", &topic).with("admission", "members")).await;
    assert_eq!(ack.op, "ack", "{ack:?}");
    let meta = expect_op(&mut carol, "meta").await;
    assert_eq!(meta.ex_str("admission"), Some("members"));
    c.converged(&[0, 1, 2]).await;
    (dan, carol, topic)
}

/// dan lets carol admit too; both wait until she holds it.
async fn carol_admits(c: &Cluster, dan: &mut Client, carol: &mut Client, topic: &str) {
    let p = request(
        dan,
        on("acl", topic)
            .with("subject", "carol")
            .with("grant", json!(["admit"])),
    )
    .await;
    assert_eq!(p.op, "ack", "{p:?}");
    expect_op(carol, "acl").await;
    c.converged(&[0, 1, 2]).await;
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

/// The next packets, which must be exactly those with `ops`, in any order
/// (an `admit` and the `join` it causes travel by different paths to
/// other nodes: the first as a flooded packet, the second in the log).
async fn expect_ops(c: &mut Client, ops: &[&str]) -> Vec<Packet> {
    let mut got = Vec::new();
    let mut want: Vec<&str> = ops.to_vec();
    while !want.is_empty() {
        let p = c
            .recv_timeout(WAIT)
            .await
            .unwrap_or_else(|e| panic!("waiting for {want:?}: {e}"));
        let at = want
            .iter()
            .position(|op| *op == p.op)
            .unwrap_or_else(|| panic!("expected one of {want:?}, got {p:?}"));
        want.remove(at);
        got.push(p);
    }
    got
}

fn pick<'a>(got: &'a [Packet], op: &str) -> &'a Packet {
    got.iter().find(|p| p.op == op).expect("op present")
}

/// Nothing is waiting for `c`: a ping's pong is the next packet.
async fn nothing_more(c: &mut Client) {
    let id = format!("quiet-{}", tenthbit::proto::id::new_id());
    c.send(&Packet::request("ping").with_id(id.clone()))
        .await
        .expect("send");
    let p = c.recv_timeout(WAIT).await.expect("pong");
    assert_eq!(p.op, "pong", "expected nothing more, got {p:?}");
    assert_eq!(p.ex_str("for"), Some(id.as_str()));
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
async fn a_request_crosses_the_line_once_and_its_admission_reaches_every_node() {
    let c = Cluster::start(3, LINE3).await;
    let (mut dan, mut carol, topic) = setup(&c).await;
    let mut bob = c.nodes[0].server().login("bob", PW).await;
    let mut bob_mid = c.nodes[1].server().login("bob", PW).await;
    let mut dan_too = c.nodes[2].server().login("dan", PW).await;
    expect_op(&mut dan_too, "meta").await;

    let join = on("join", &topic)
        .with("note", "it's bob from the meetup")
        .with("key", "x25519:Ym9iJ3Mga2V5");
    let ack = request(&mut bob, join).await;
    assert_eq!(ack.ex["pending"], json!(true), "{ack:?}");
    let request_id = ack.ex_str("request").expect("request id").to_owned();
    let expires = ack.ex["expires"].as_i64().expect("expires");

    // dan, two links away, is asked once, with everything bob said.
    let pushed = expect_op(&mut dan, "join-request").await;
    assert_eq!(pushed.topic.as_deref(), Some(topic.as_str()));
    assert_eq!(pushed.from.as_deref(), Some("bob"));
    assert_eq!(pushed.ex_str("request"), Some(request_id.as_str()));
    assert_eq!(pushed.ex["expires"], json!(expires));
    assert_eq!(pushed.ex_str("note"), Some("it's bob from the meetup"));
    assert_eq!(pushed.ex_str("key"), Some("x25519:Ym9iJ3Mga2V5"));
    nothing_more(&mut dan).await;
    expect_op(&mut dan_too, "join-request").await;

    let ack = request(
        &mut dan,
        admit(&topic, "bob", true).with("key", "sealed-session-key"),
    )
    .await;
    assert_eq!(ack.op, "ack", "{ack:?}");
    // Both of bob's connections, on two other nodes, are told once, with
    // the admitter's key, and see themselves join.
    for b in [&mut bob, &mut bob_mid] {
        let got = expect_ops(b, &["admit", "join"]).await;
        let told = pick(&got, "admit");
        assert_eq!(told.from.as_deref(), Some("dan"));
        assert_eq!(told.topic.as_deref(), Some(topic.as_str()));
        assert_eq!(told.ex_str("user"), Some("bob"));
        assert_eq!(told.ex_str("result"), Some("admitted"));
        assert_eq!(told.ex_str("request"), Some(request_id.as_str()));
        assert_eq!(told.ex_str("key"), Some("sealed-session-key"));
        assert_eq!(pick(&got, "join").from.as_deref(), Some("bob"));
    }
    // The join is announced on every node; dan's other connection, by
    // the admitter's, learns it is settled too.
    let got = expect_ops(&mut dan_too, &["admit", "join"]).await;
    assert_eq!(pick(&got, "admit").ex_str("result"), Some("admitted"));
    assert!(pick(&got, "admit").ex_str("key").is_none());
    assert_eq!(pick(&got, "join").from.as_deref(), Some("bob"));
    let joined = expect_op(&mut carol, "join").await;
    assert_eq!(joined.from.as_deref(), Some("bob"));
    c.converged(&[0, 1, 2]).await;

    // bob is a member on his node: he reads, and his message reaches dan.
    let meta = request(&mut bob, on("meta", &topic)).await;
    assert_eq!(meta.op, "meta", "{meta:?}");
    assert!(members(&meta).contains(&"bob".to_owned()), "{meta:?}");
    let p = request(&mut bob, on("send", &topic).with("body", "thanks")).await;
    assert_eq!(p.op, "ack", "{p:?}");
    assert_eq!(
        expect_op(&mut dan, "send").await.ex_str("body"),
        Some("thanks")
    );
    // Settled on every node.
    let again = request(&mut dan, admit(&topic, "bob", true)).await;
    assert_eq!(again.ex_str("code"), Some("admission/not-pending"));
    for cl in [&mut dan_too, &mut carol, &mut bob_mid] {
        expect_op(cl, "send").await;
    }
    for cl in [&mut dan, &mut dan_too, &mut carol, &mut bob, &mut bob_mid] {
        nothing_more(cl).await;
    }
}

#[tokio::test]
async fn a_decline_on_the_middle_node_reaches_both_ends() {
    let c = Cluster::start(3, LINE3).await;
    let (mut dan, mut carol, topic) = setup(&c).await;
    carol_admits(&c, &mut dan, &mut carol, &topic).await;
    let mut bob = c.nodes[0].server().login("bob", PW).await;
    let mut bob_far = c.nodes[2].server().login("bob", PW).await;
    ask(&mut bob, &topic).await;
    expect_op(&mut carol, "join-request").await;
    expect_op(&mut dan, "join-request").await;

    let ack = request(
        &mut carol,
        admit(&topic, "bob", false).with("note", "not tonight"),
    )
    .await;
    assert_eq!(ack.op, "ack", "{ack:?}");
    for b in [&mut bob, &mut bob_far] {
        let told = expect_op(b, "admit").await;
        assert_eq!(told.ex_str("result"), Some("declined"));
        assert_eq!(told.from.as_deref(), Some("carol"));
        assert_eq!(told.ex_str("note"), Some("not tonight"));
    }
    // dan, on the far node, learns it is settled, without the note.
    let settled = expect_op(&mut dan, "admit").await;
    assert_eq!(settled.ex_str("result"), Some("declined"));
    assert_eq!(settled.ex_str("user"), Some("bob"));
    assert!(settled.ex_str("note").is_none(), "{settled:?}");
    let late = request(&mut dan, admit(&topic, "bob", true)).await;
    assert_eq!(late.ex_str("code"), Some("admission/not-pending"));
    let meta = request(&mut dan, on("meta", &topic)).await;
    assert!(!members(&meta).contains(&"bob".to_owned()), "{meta:?}");
    let p = request(&mut bob, on("history", &topic)).await;
    assert_eq!(p.ex_str("code"), Some("topic/not-member"));
    for cl in [&mut dan, &mut carol, &mut bob, &mut bob_far] {
        nothing_more(cl).await;
    }
}

#[tokio::test]
async fn a_request_nobody_answers_expires_on_every_node() {
    let c = Cluster::start_with(3, LINE3, |_, cfg| {
        cfg.limits.join_request_ttl_ms = 1_500;
    })
    .await;
    let (mut dan, _carol, topic) = setup(&c).await;
    let mut bob = c.nodes[0].server().login("bob", PW).await;
    let mut bob_far = c.nodes[2].server().login("bob", PW).await;
    let first = ask(&mut bob, &topic).await;
    expect_op(&mut dan, "join-request").await;
    for b in [&mut bob, &mut bob_far, &mut dan] {
        let told = expect_op(b, "admit").await;
        assert_eq!(told.ex_str("result"), Some("expired"));
        assert_eq!(told.ex_str("user"), Some("bob"));
        assert_eq!(told.from.as_deref(), Some("@mesh.test"));
        assert_eq!(told.ex_str("request"), first.ex_str("request"));
    }
    let late = request(&mut dan, admit(&topic, "bob", true)).await;
    assert_eq!(late.ex_str("code"), Some("admission/not-pending"));
    // Asking again, now on the far node, is a new request.
    let second = ask(&mut bob_far, &topic).await;
    assert_ne!(second.ex_str("request"), first.ex_str("request"));
    let pushed = expect_op(&mut dan, "join-request").await;
    assert_eq!(pushed.ex_str("request"), second.ex_str("request"));
}

#[tokio::test]
async fn an_admitter_logging_in_on_another_node_later_is_shown_it_and_decides() {
    let c = Cluster::start(3, LINE3).await;
    let (mut dan, mut carol, topic) = setup(&c).await;
    carol_admits(&c, &mut dan, &mut carol, &topic).await;
    carol.close(WAIT).await;
    let mut bob = c.nodes[0].server().login("bob", PW).await;
    let ack = ask(&mut bob, &topic).await;
    // dan got it on node 2, so node 1 (between) holds it.
    expect_op(&mut dan, "join-request").await;

    let mut carol = c.nodes[1].server().client().await;
    let p = request(&mut carol, password_auth("carol", PW)).await;
    assert_eq!(p.op, "ack", "{p:?}");
    expect_op(&mut carol, "meta").await;
    expect_op(&mut carol, "meta").await;
    let meta = expect_op(&mut carol, "meta").await;
    assert_eq!(meta.topic.as_deref(), Some(topic.as_str()));
    let pushed = expect_op(&mut carol, "join-request").await;
    assert_eq!(pushed.ex_str("request"), ack.ex_str("request"));
    assert_eq!(pushed.from.as_deref(), Some("bob"));

    let p = request(&mut carol, admit(&topic, "bob", true)).await;
    assert_eq!(p.op, "ack", "{p:?}");
    let got = expect_ops(&mut bob, &["admit", "join"]).await;
    assert_eq!(pick(&got, "admit").from.as_deref(), Some("carol"));
    let got = expect_ops(&mut dan, &["admit", "join"]).await;
    let settled = pick(&got, "admit");
    assert_eq!(settled.ex_str("result"), Some("admitted"));
    assert_eq!(settled.from.as_deref(), Some("carol"));
    for cl in [&mut dan, &mut carol, &mut bob] {
        nothing_more(cl).await;
    }
}

#[tokio::test]
async fn a_withdrawal_reaches_the_admitters_and_the_other_connections() {
    let c = Cluster::start(3, LINE3).await;
    let (mut dan, _carol, topic) = setup(&c).await;
    let mut bob = c.nodes[0].server().login("bob", PW).await;
    let mut bob_mid = c.nodes[1].server().login("bob", PW).await;
    ask(&mut bob, &topic).await;
    expect_op(&mut dan, "join-request").await;
    // Withdrawn from another node than it was made on.
    let p = request(&mut bob_mid, on("leave", &topic)).await;
    assert_eq!(p.op, "ack", "{p:?}");
    let gone = expect_op(&mut dan, "admit").await;
    assert_eq!(gone.ex_str("result"), Some("withdrawn"));
    assert_eq!(gone.from.as_deref(), Some("bob"));
    let gone = expect_op(&mut bob, "admit").await;
    assert_eq!(gone.ex_str("result"), Some("withdrawn"));
    let late = request(&mut dan, admit(&topic, "bob", true)).await;
    assert_eq!(late.ex_str("code"), Some("admission/not-pending"));
    for cl in [&mut dan, &mut bob, &mut bob_mid] {
        nothing_more(cl).await;
    }
}

#[tokio::test]
async fn a_node_cut_off_when_a_request_was_made_learns_it_when_linked_again() {
    let c = Cluster::start(3, LINE3).await;
    let (mut dan, _carol, topic) = setup(&c).await;
    c.cut(1, 2);
    c.links_up(2, &[]).await;
    let mut bob = c.nodes[0].server().login("bob", PW).await;
    let ack = ask(&mut bob, &topic).await;
    c.restore(1, 2);
    // Node 1 hands node 2 what is pending when the link comes back.
    let pushed = expect_op(&mut dan, "join-request").await;
    assert_eq!(pushed.ex_str("request"), ack.ex_str("request"));
    let p = request(&mut dan, admit(&topic, "bob", true)).await;
    assert_eq!(p.op, "ack", "{p:?}");
    let got = expect_ops(&mut bob, &["admit", "join"]).await;
    assert_eq!(pick(&got, "admit").ex_str("result"), Some("admitted"));
    for cl in [&mut dan, &mut bob] {
        nothing_more(cl).await;
    }
}
