//! The operator's listener: `/healthz` and a `/metrics` scrape whose figures
//! move with traffic (connections, logins, packets, deliveries, kept
//! messages, rate-limited packets, errors by code, store commits).

mod common;

use common::*;
use tenthbit::proto::Packet;
use tokio::net::TcpStream;

#[tokio::test]
async fn metrics_move_with_traffic_and_health_says_ready() {
    let server = TestServer::start_with(|c| {
        c.ops.enabled = true;
        c.ops.listen = "127.0.0.1:0".parse().expect("addr");
        c.limits.packet_burst = 5;
        c.limits.packets_per_second = 1;
    })
    .await;
    let ops = server.handle.ops_addr().expect("ops listener bound");
    assert_eq!(plain_get(ops, "/healthz").await, (200, "ok\n".into()));
    let (status, before) = plain_get(ops, "/metrics").await;
    assert_eq!(status, 200);
    assert!(before.ends_with("# EOF\n"), "{before}");

    server.register("dan", "hellosecret").await;
    server.register("bob", "bobsecret1").await;
    let mut dan = server.login("dan", "hellosecret").await;
    let mut bob = server.login("bob", "bobsecret1").await;
    let mut bad = server.client().await;
    let refused = request(&mut bad, password_auth("dan", "wrongwrong")).await;
    assert_eq!(refused.ex_str("code"), Some("auth/failed"));
    let created = request(&mut dan, Packet::request("create").with("name", "lobby")).await;
    let topic = created.topic.expect("topic");
    let joined = request(&mut bob, Packet::request("join").with("name", "lobby")).await;
    assert_eq!(joined.op, "meta");
    expect_op(&mut dan, "join").await;
    let mut send = Packet::request("send").with("body", "counted");
    send.topic = Some(topic);
    assert_eq!(request(&mut dan, send).await.op, "ack");
    expect_op(&mut bob, "send").await;
    // Past the burst, packets are refused (the rate is 1 a second).
    let mut limited = false;
    for i in 0..10 {
        let p = request(&mut bad, Packet::request("ping").with_id(format!("p{i}"))).await;
        limited |= p.ex_str("code") == Some("rate/limited");
    }
    assert!(limited, "the rate limit never applied");

    let (_, after) = plain_get(ops, "/metrics").await;
    for series in [
        "tenthbit_connections_total{transport=\"10bit/0.1\"}",
        "tenthbit_logins_total{method=\"password\",result=\"ok\"}",
        "tenthbit_logins_total{method=\"password\",result=\"failed\"}",
        "tenthbit_packets_in_total",
        "tenthbit_packets_out_total",
        "tenthbit_deliveries_total",
        "tenthbit_messages_kept_total",
        "tenthbit_rate_limited_packets_total",
        "tenthbit_errors_total{code=\"auth/failed\"}",
        "tenthbit_errors_total{code=\"rate/limited\"}",
        "tenthbit_store_commit_seconds_count",
    ] {
        assert!(
            sample(&after, series) > sample(&before, series),
            "{series} did not move:\n{after}"
        );
    }
    assert!(
        sample(&after, "tenthbit_connections_open{transport=\"10bit/0.1\"}") >= 3.0,
        "{after}"
    );
    assert!(after.contains("tenthbit_slow_consumers_total 0"), "{after}");
    assert_eq!(plain_get(ops, "/nothing").await.0, 404);
    server.stop().await;
    // Stopped: the operator's listener is gone with the server.
    assert!(TcpStream::connect(ops).await.is_err());
}

#[tokio::test]
async fn the_operators_listener_is_off_by_default() {
    let server = TestServer::start().await;
    assert_eq!(server.handle.ops_addr(), None);
    server.stop().await;
}
