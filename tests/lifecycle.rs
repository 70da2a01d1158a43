//! Session lifecycle: handshake and login deadlines, keepalive and idle
//! timeout, connection limits, slow consumers, and shutdown.

mod common;

use std::time::Duration;

use common::*;
use futures_util::FutureExt;
use tenthbit::client::Client;
use tenthbit::proto::Packet;
use tenthbit::tls::Alpn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn silent_tcp_client_is_dropped_at_the_handshake_deadline() {
    let server = TestServer::start_with(|c| c.limits.handshake_timeout_ms = 200).await;
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut buf = [0u8; 64];
    // No ClientHello: the server must hang up on its own (EOF or reset).
    let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
        .await
        .expect("server hangs up before the test's timeout");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    // A half-sent ClientHello gets the same treatment.
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
        .await
        .expect("hang up");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    server.stop().await;
}

#[tokio::test]
async fn no_login_before_the_deadline_gets_bye() {
    let server = TestServer::start_with(|c| c.limits.login_timeout_ms = 300).await;
    for alpn in [Alpn::Plain, Alpn::Gzip] {
        let mut c = server.connect_alpn(vec![alpn]).await;
        expect_op(&mut c, "welcome").await;
        // Pings do not count as logging in.
        assert_alive(&mut c).await;
        expect_bye(&mut c, "session/login-timeout").await;
        expect_clean_close(&mut c).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn keepalive_ping_then_idle_timeout() {
    let server = TestServer::start_with(|c| {
        c.limits.keepalive_interval_ms = 150;
        c.limits.idle_timeout_ms = 450;
    })
    .await;
    // A client that answers each server ping stays connected across several
    // idle periods.
    let mut c = server.client().await;
    for _ in 0..4 {
        let ping = expect_op(&mut c, "ping").await;
        assert!(ping.id.is_some() && ping.ts.is_some());
        let id = ping.id.unwrap();
        c.send(&Packet::request("pong").with("for", id))
            .await
            .unwrap();
    }
    // `pong` gets no reply: the next packet answers this ping request.
    assert_alive(&mut c).await;

    // A client that stays silent gets one ping, then the idle bye.
    let mut quiet = server.client().await;
    expect_op(&mut quiet, "ping").await;
    expect_bye(&mut quiet, "session/idle-timeout").await;
    expect_clean_close(&mut quiet).await;
    server.stop().await;
}

#[tokio::test]
async fn connection_limits_per_ip_and_total() {
    let server = TestServer::start_with(|c| c.limits.max_connections_per_ip = 2).await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    let mut refused = server.connect().await;
    expect_bye(&mut refused, "server/per-ip-limit").await;
    expect_clean_close(&mut refused).await;
    assert_alive(&mut a).await;
    assert_alive(&mut b).await;
    server.stop().await;

    let server = TestServer::start_with(|c| c.limits.max_connections = 1).await;
    let mut a = server.client().await;
    let mut refused = server.connect_alpn(vec![Alpn::Gzip]).await;
    expect_bye(&mut refused, "server/full").await;
    expect_clean_close(&mut refused).await;
    assert_alive(&mut a).await;
    server.stop().await;
}

#[tokio::test]
async fn client_that_never_reads_is_cut_as_slow_consumer() {
    let server = TestServer::start_with(|c| {
        c.limits.max_sendq_packets = 16;
        c.limits.write_timeout_ms = 2000;
    })
    .await;
    let mut slow = server.client().await;
    let mut other = server.client().await;
    // Long ids make long replies, so the socket buffers fill quickly.
    let id = "i".repeat(128);
    let line = format!("{{\"id\":\"{id}\",\"op\":\"ping\"}}\n").repeat(1000);
    let mut sent = 0usize;
    for _ in 0..400 {
        if tokio::time::timeout(WAIT, slow.send_raw(line.as_bytes()))
            .await
            .is_err()
        {
            break;
        }
        sent += 1000;
        // The other client is served throughout.
        if sent % 50_000 == 0 {
            assert_alive(&mut other).await;
        }
    }
    // Read what was delivered: fewer pongs than pings, then the end.
    let mut pongs = 0usize;
    let ended = loop {
        match tokio::time::timeout(WAIT, slow.recv()).await {
            Ok(Ok(Some(p))) if p.op == "pong" => pongs += 1,
            Ok(Ok(Some(p))) => break Some(p),
            Ok(Ok(None)) | Ok(Err(_)) => break None,
            Err(_) => panic!("connection was not cut ({pongs} pongs of {sent})"),
        }
    };
    assert!(pongs < sent, "{pongs} of {sent}");
    if let Some(p) = ended {
        assert_eq!(p.op, "bye");
        assert_eq!(p.ex_str("code"), Some("session/sendq-exceeded"));
    }
    assert_alive(&mut other).await;
    server.stop().await;
}

/// A client whose writer fails (it read nothing for the write timeout)
/// is ended whole: its session does not live on, online, until the idle
/// timeout just because it sends nothing that needs a reply.
#[tokio::test]
async fn a_session_whose_writes_time_out_ends() {
    let server = TestServer::start_with(|c| {
        c.ops.enabled = true;
        c.ops.listen = "127.0.0.1:0".parse().expect("addr");
        c.limits.write_timeout_ms = 300;
        // Room to queue everything: the writer's failure ends it, not
        // the send queue.
        c.limits.max_sendq_packets = 100_000;
        c.limits.max_sendq_bytes = 1 << 30;
        c.limits.packets_per_second = 100_000;
        c.limits.packet_burst = 100_000;
    })
    .await;
    server.register("amy", "hellosecret").await;
    server.register("bob", "hellosecret").await;
    let mut amy = server.login("amy", "hellosecret").await;
    let mut bob = server.login("bob", "hellosecret").await;
    let topic = request(&mut bob, Packet::request("create").with("name", "big"))
        .await
        .topic
        .expect("topic");
    request(&mut amy, on("join", &topic)).await;
    let ops = server.handle.ops_addr().expect("ops listener");
    let open = || async {
        sample(
            &plain_get(ops, "/metrics").await.1,
            "tenthbit_connections_open{transport=\"10bit/0.1\"}",
        )
    };
    assert_eq!(open().await, 2.0);
    // amy reads nothing from now on; bob sends far more than the sockets
    // between the server and amy hold, without ids (nothing comes back).
    let body = "x".repeat(60_000);
    let mut batch = Vec::new();
    for _ in 0..400 {
        batch.extend_from_slice(&on("send", &topic).with("body", body.as_str()).to_line());
    }
    bob.send_raw(&batch).await.expect("sent");
    // Polling a condition: amy's connection is gone; bob's is not.
    let deadline = tokio::time::Instant::now() + WAIT;
    while open().await != 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the session of a client whose writes failed lives on"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_alive(&mut bob).await;
    drop(amy);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_says_bye_to_every_client_and_stops_accepting() {
    let server = TestServer::start().await;
    let mut plain = server.client().await;
    let mut zipped = server.connect_alpn(vec![Alpn::Gzip]).await;
    expect_op(&mut zipped, "welcome").await;
    let addr = server.addr;
    let opts = server.options(vec![Alpn::Plain]);
    let _dir = server.dir;
    let stopping = tokio::spawn(server.handle.shutdown());
    for c in [&mut plain, &mut zipped] {
        expect_bye(c, "server/shutdown").await;
        expect_clean_close(c).await;
    }
    tokio::time::timeout(WAIT, stopping)
        .await
        .expect("shutdown completes")
        .unwrap();
    assert!(Client::connect(&addr.to_string(), &opts).await.is_err());
}

/// A shutdown while kept messages are still committing: the client gets
/// their acks first and `bye` last, as its last word says.
#[tokio::test]
async fn shutdown_answers_what_is_committing_before_bye() {
    let server = TestServer::start_with(|c| {
        c.ops.enabled = true;
        c.ops.listen = "127.0.0.1:0".parse().expect("addr");
    })
    .await;
    let (mut dan, topic) = server.with_topic("dan", "last").await;
    let mut idle = server.client().await;
    let ops = server.handle.ops_addr().expect("ops listener");
    let read_before = sample(
        &plain_get(ops, "/metrics").await.1,
        "tenthbit_packets_in_total",
    );
    {
        // The store thread is held: the sends wait to commit.
        let store = server.handle.store();
        let (release, held) = std::sync::mpsc::channel::<()>();
        let mut hold = std::pin::pin!(store.call(move |_| {
            let _ = held.recv();
            Ok(())
        }));
        assert!((&mut hold).now_or_never().is_none(), "queued");
        let mut batch = Vec::new();
        for n in 0..20 {
            batch.extend_from_slice(&on("send", &topic).with_id(format!("s{n}")).to_line());
        }
        dan.send_raw(&batch).await.expect("sent");
        // Polling a condition: the server has read all twenty.
        let deadline = tokio::time::Instant::now() + WAIT;
        while sample(
            &plain_get(ops, "/metrics").await.1,
            "tenthbit_packets_in_total",
        ) < read_before + 20.0
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the sends were not read"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The session sees the shutdown before the commits can be in.
        server.handle.shutdown_token().cancel();
        // The drain is under way and held open by dan's commits: the
        // operator's listener still answers, and says so.
        expect_bye(&mut idle, "server/shutdown").await;
        let (status, body) = plain_get(ops, "/healthz").await;
        assert_eq!((status, body.as_str()), (503, "not ready\n"));
        release.send(()).expect("the hold is running");
        hold.await.expect("released");
    }
    for n in 0..20 {
        let ack = expect_op(&mut dan, "ack").await;
        assert_eq!(ack.ex_str("for"), Some(format!("s{n}").as_str()));
    }
    expect_bye(&mut dan, "server/shutdown").await;
    expect_clean_close(&mut dan).await;
    let _dir = server.dir;
    tokio::time::timeout(WAIT, server.handle.wait())
        .await
        .expect("shutdown completes");
    // Once the store is closed, the operator's listener is gone too.
    assert!(tokio::net::TcpStream::connect(ops).await.is_err());
}

#[tokio::test]
async fn shutdown_grace_closes_clients_that_do_not_read() {
    let server = TestServer::start_with(|c| {
        c.limits.shutdown_grace_ms = 300;
        c.limits.write_timeout_ms = 60_000;
    })
    .await;
    let mut stuck = server.client().await;
    // Fill this client's socket buffers so its writer blocks.
    let line = format!("{{\"id\":\"{}\",\"op\":\"ping\"}}\n", "s".repeat(128)).repeat(1000);
    for _ in 0..200 {
        if tokio::time::timeout(Duration::from_millis(500), stuck.send_raw(line.as_bytes()))
            .await
            .is_err()
        {
            break;
        }
    }
    let _dir = server.dir;
    tokio::time::timeout(WAIT, server.handle.shutdown())
        .await
        .expect("shutdown does not wait for a client that never reads");
}

/// A connection still in its TLS handshake does not hold shutdown up: it
/// is dropped at once, not at its handshake deadline.
#[tokio::test]
async fn shutdown_drops_connections_still_in_their_handshake() {
    let server = TestServer::start_with(|c| {
        c.limits.handshake_timeout_ms = 600_000;
        c.limits.shutdown_grace_ms = 100;
    })
    .await;
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // Connections are accepted in order: once a later one is answered,
    // the silent one is the server's.
    let mut c = server.client().await;
    assert_alive(&mut c).await;
    let _dir = server.dir;
    tokio::time::timeout(WAIT, server.handle.shutdown())
        .await
        .expect("shutdown does not wait for a handshake that never comes");
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(WAIT, silent.read(&mut buf))
        .await
        .expect("hang up");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
}
