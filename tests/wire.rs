//! The wire contract over real TLS on loopback: ALPN, welcome, framing, the
//! envelope, every bad-input case, and the one-reply-per-request rule.

mod common;

use common::*;
use tenthbit::client::{Client, Error};
use tenthbit::proto::Packet;
use tenthbit::tls::{self, Alpn};

#[tokio::test]
async fn welcome_for_each_alpn_and_for_none() {
    let server = TestServer::start().await;
    for (offer, expect) in [
        (vec![Alpn::Plain], "10bit/0.1"),
        (vec![Alpn::Gzip], "10bit-gzip/0.1"),
        (vec![], "10bit/0.1"),
        (vec![Alpn::Plain, Alpn::Gzip], "10bit-gzip/0.1"),
    ] {
        let mut c = server.connect_alpn(offer.clone()).await;
        assert_eq!(c.alpn().name(), expect, "offered {offer:?}");
        let w = expect_op(&mut c, "welcome").await;
        assert!(w.id.is_some() && w.ts.is_some(), "{w:?}");
        assert_eq!(w.from.as_deref(), Some("@localhost"));
        assert_eq!(w.ex_str("server"), Some("localhost"));
        assert_eq!(w.ex_str("protocol"), Some(expect));
        assert!(
            w.ex_str("software")
                .is_some_and(|s| s.starts_with("tenthbit/"))
        );
        let methods = w.ex.get("auth").and_then(|a| a.get("methods")).cloned();
        assert_eq!(
            methods,
            Some(serde_json::json!(["password", "ticket", "pubkey"]))
        );
        assert_alive(&mut c).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn gzip_not_offered_when_disabled() {
    let server = TestServer::start_with(|c| c.tls.gzip = false).await;
    let mut c = server.connect_alpn(vec![Alpn::Gzip, Alpn::Plain]).await;
    assert_eq!(c.alpn(), Alpn::Plain);
    expect_op(&mut c, "welcome").await;
    let refused =
        Client::connect(&server.addr.to_string(), &server.options(vec![Alpn::Gzip])).await;
    assert!(refused.is_err());
    server.stop().await;
}

#[tokio::test]
async fn unknown_alpn_is_refused_in_the_handshake() {
    let server = TestServer::start().await;
    let base = tls::client_config(&tls::Trust::Fingerprint(server.fingerprint), &[]).unwrap();
    let mut config = (*base).clone();
    config.alpn_protocols = vec![b"h2".to_vec(), b"10bit/9.9".to_vec()];
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let result = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await;
    let Err(err) = result else {
        panic!("handshake must fail");
    };
    assert!(
        err.to_string().contains("NoApplicationProtocol"),
        "unexpected error: {err}"
    );
    // The server is unharmed.
    let mut c = server.client().await;
    assert_alive(&mut c).await;
    server.stop().await;
}

/// The suite the server picks for a client offering `suites`, in that
/// order, over `version`.
async fn negotiated(
    server: &TestServer,
    suites: &[rustls::SupportedCipherSuite],
    version: &'static rustls::SupportedProtocolVersion,
) -> rustls::CipherSuite {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = suites.to_vec();
    let provider = std::sync::Arc::new(provider);
    let verifier =
        tls::pin::FingerprintVerifier::new(tls::pin::Expect::Pinned(server.fingerprint), &provider);
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"10bit/0.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    tls.get_ref().1.negotiated_cipher_suite().unwrap().suite()
}

#[tokio::test]
async fn aes128_gcm_is_preferred_unless_the_client_puts_chacha_first() {
    use rustls::CipherSuite as S;
    use rustls::crypto::ring::cipher_suite as cs;
    let server = TestServer::start().await;
    let v13 = &rustls::version::TLS13;
    // rustls's and most clients' order: AES-256 first. The server's wins.
    let aes_first = [
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    assert_eq!(
        negotiated(&server, &aes_first, v13).await,
        S::TLS13_AES_128_GCM_SHA256
    );
    // A device without AES instructions lists ChaCha20 first: it gets it.
    let chacha_first = [
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_AES_128_GCM_SHA256,
    ];
    assert_eq!(
        negotiated(&server, &chacha_first, v13).await,
        S::TLS13_CHACHA20_POLY1305_SHA256
    );
    // A client with AES-256 only still connects.
    assert_eq!(
        negotiated(&server, &[cs::TLS13_AES_256_GCM_SHA384], v13).await,
        S::TLS13_AES_256_GCM_SHA384
    );
    // TLS 1.2, rustls's default order (AES-256 first for each key type).
    let v12_suites: Vec<_> = rustls::crypto::ring::default_provider()
        .cipher_suites
        .into_iter()
        .filter(|s| s.version() == &rustls::version::TLS12)
        .collect();
    let v12 = negotiated(&server, &v12_suites, &rustls::version::TLS12).await;
    assert!(
        matches!(
            v12,
            S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        ),
        "{v12:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn every_request_gets_one_reply_in_order() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let mut batch = String::new();
    let ops = ["ping", "join", "nonsense", "quit-not", "find", "ping"];
    for (i, op) in ops.iter().enumerate() {
        batch.push_str(&format!("{{\"id\":\"r{i}\",\"op\":\"{op}\"}}\n"));
    }
    c.send_raw(batch.as_bytes()).await.unwrap();
    let expected = ["pong", "error", "error", "error", "error", "pong"];
    for (i, want) in expected.iter().enumerate() {
        let p = expect_op(&mut c, want).await;
        assert_eq!(p.ex_str("for"), Some(format!("r{i}").as_str()));
        assert!(p.id.is_some() && p.ts.is_some());
    }
    // No id: the reply carries no `for`.
    c.send_raw(b"{\"op\":\"ping\"}\n").await.unwrap();
    let p = expect_op(&mut c, "pong").await;
    assert!(p.ex.get("for").is_none(), "{p:?}");
    assert_alive(&mut c).await;
    server.stop().await;
}

#[tokio::test]
async fn each_bad_input_gets_its_code_and_the_connection_goes_on() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let deep = format!(
        "{{\"op\":\"ping\",\"ex\":{{\"a\":{}1{}}}}}\n",
        "[".repeat(40),
        "]".repeat(40)
    );
    let cases: Vec<(Vec<u8>, &str, Option<&str>)> = vec![
        (b"{\"op\":\"ping\"\n".to_vec(), "packet/malformed", None),
        (b"this is not json\n".to_vec(), "packet/malformed", None),
        (b"{\"op\":\"p\xffing\"}\n".to_vec(), "packet/bad-utf8", None),
        (b"[1,2,3]\n".to_vec(), "packet/not-object", None),
        (b"\"ping\"\n".to_vec(), "packet/not-object", None),
        (b"42\n".to_vec(), "packet/not-object", None),
        (
            b"{\"id\":\"b1\",\"op\":5}\n".to_vec(),
            "packet/bad-field",
            Some("b1"),
        ),
        (
            b"{\"id\":\"b2\",\"op\":\"ping\",\"ex\":[1]}\n".to_vec(),
            "packet/bad-field",
            Some("b2"),
        ),
        (
            b"{\"id\":\"b3\",\"op\":\"ping\",\"ts\":\"now\"}\n".to_vec(),
            "packet/bad-field",
            Some("b3"),
        ),
        (
            b"{\"id\":\"b4\",\"op\":\"ping\",\"topic\":7}\n".to_vec(),
            "packet/bad-field",
            Some("b4"),
        ),
        (
            b"{\"id\":\"b5\",\"op\":\"ping\",\"from\":{}}\n".to_vec(),
            "packet/bad-field",
            Some("b5"),
        ),
        (
            b"{\"id\":9,\"op\":\"ping\"}\n".to_vec(),
            "packet/bad-field",
            None,
        ),
        (
            format!("{{\"id\":\"{}\",\"op\":\"ping\"}}\n", "x".repeat(129)).into_bytes(),
            "packet/bad-field",
            None,
        ),
        (deep.into_bytes(), "packet/too-deep", None),
        (
            b"{\"id\":\"b6\"}\n".to_vec(),
            "packet/missing-op",
            Some("b6"),
        ),
        (
            b"{\"id\":\"b7\",\"op\":\"dance\"}\n".to_vec(),
            "op/unknown",
            Some("b7"),
        ),
        (
            b"{\"id\":\"b8\",\"op\":\"auth\",\"ex\":{\"method\":\"password\"}}\n".to_vec(),
            "request/invalid",
            Some("b8"),
        ),
    ];
    for (line, code, for_id) in cases {
        c.send_raw(&line).await.unwrap();
        let p = expect_error(&mut c, code).await;
        assert_eq!(
            p.ex_str("for"),
            for_id,
            "{}",
            String::from_utf8_lossy(&line)
        );
        assert!(p.id.is_some() && p.ts.is_some());
        // A good packet in between keeps the error counter from closing us.
        assert_alive(&mut c).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn over_long_line_is_refused_and_discarded() {
    let server = TestServer::start_with(|c| c.limits.max_line_bytes = 4096).await;
    let mut c = server.client().await;
    // Exactly at the limit is fine.
    let pad = 4096 - r#"{"id":"ok","op":"ping","ex":{"pad":""}}"#.len();
    let exact = format!(
        "{{\"id\":\"ok\",\"op\":\"ping\",\"ex\":{{\"pad\":\"{}\"}}}}\n",
        "x".repeat(pad)
    );
    assert_eq!(exact.len(), 4097);
    c.send_raw(exact.as_bytes()).await.unwrap();
    expect_op(&mut c, "pong").await;
    // One byte over, then a huge one sent in pieces: one error each, and the
    // ping glued after the huge line's end is still read.
    let over = format!(
        "{{\"id\":\"no\",\"op\":\"ping\",\"ex\":{{\"pad\":\"{}\"}}}}\n",
        "x".repeat(pad + 1)
    );
    c.send_raw(over.as_bytes()).await.unwrap();
    let e = expect_error(&mut c, "packet/too-large").await;
    assert!(e.ex.get("for").is_none());
    let chunk = vec![b'y'; 64 * 1024];
    for _ in 0..32 {
        c.send_raw(&chunk).await.unwrap();
    }
    c.send_raw(b"\n{\"id\":\"after\",\"op\":\"ping\"}\n")
        .await
        .unwrap();
    expect_error(&mut c, "packet/too-large").await;
    let p = expect_op(&mut c, "pong").await;
    assert_eq!(p.ex_str("for"), Some("after"));
    server.stop().await;
}

#[tokio::test]
async fn crlf_and_blank_lines() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    c.send_raw(b"\r\n\n   \n\t\r\n{\"id\":\"c1\",\"op\":\"ping\"}\r\n\n")
        .await
        .unwrap();
    let p = expect_op(&mut c, "pong").await;
    assert_eq!(p.ex_str("for"), Some("c1"));
    // Exactly one reply: the next thing back answers the next request.
    assert_alive(&mut c).await;
    server.stop().await;
}

#[tokio::test]
async fn too_many_errors_in_a_row_closes_with_a_final_error() {
    let server = TestServer::start_with(|c| c.limits.max_protocol_errors = 3).await;
    let mut c = server.client().await;
    // Two errors, a good packet, two errors: the counter was reset.
    for _ in 0..2 {
        c.send_raw(b"nope\n").await.unwrap();
        expect_error(&mut c, "packet/malformed").await;
    }
    assert_alive(&mut c).await;
    for _ in 0..2 {
        c.send_raw(b"nope\n").await.unwrap();
        expect_error(&mut c, "packet/malformed").await;
    }
    // The third in a row: its error, then the final bye, then close.
    c.send_raw(b"{\"id\":\"last\"}\n").await.unwrap();
    let e = expect_error(&mut c, "packet/missing-op").await;
    assert_eq!(e.ex_str("for"), Some("last"));
    expect_bye(&mut c, "packet/too-many-errors").await;
    expect_clean_close(&mut c).await;
    server.stop().await;
}

#[tokio::test]
async fn session_ops_need_login_but_ping_and_quit_do_not() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    for op in ["join", "leave", "send", "meta", "find"] {
        let p = request(&mut c, Packet::request(op).with("data", "x")).await;
        assert_eq!(p.op, "error");
        assert_eq!(p.ex_str("code"), Some("auth/required"), "{op}");
    }
    let p = request(&mut c, Packet::request("frobnicate")).await;
    assert_eq!(p.ex_str("code"), Some("op/unknown"));
    assert_alive(&mut c).await;
    let p = request(&mut c, Packet::request("quit").with_id("bye-now")).await;
    assert_eq!(p.op, "ack");
    expect_clean_close(&mut c).await;
    server.stop().await;
}

#[tokio::test]
async fn login_failures_never_echo_secrets() {
    let server = TestServer::start_with(|c| c.auth.methods = vec!["password".into()]).await;
    let mut c = server.client().await;
    let secret = "hellosecret-7b1f";
    c.send(
        &Packet::request("auth")
            .with_id("a1")
            .with("method", "password")
            .with("username", "danopia")
            .with("password", secret),
    )
    .await
    .unwrap();
    let line = tokio::time::timeout(WAIT, c.recv_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!String::from_utf8_lossy(&line).contains(secret));
    let p = Packet::decode(&line, 32).unwrap();
    assert_eq!(p.ex_str("code"), Some("auth/failed"));
    assert_eq!(p.ex_str("for"), Some("a1"));
    // A method the server does not offer.
    let p = request(
        &mut c,
        Packet::request("auth")
            .with("method", "ticket")
            .with("ticket", "OHMY")
            .with("server", "localhost"),
    )
    .await;
    assert_eq!(p.ex_str("code"), Some("auth/unsupported-method"));
    let p = request(
        &mut c,
        Packet::request("auth").with("method", "smoke-signals"),
    )
    .await;
    assert_eq!(p.ex_str("code"), Some("auth/unsupported-method"));
    assert_alive(&mut c).await;
    server.stop().await;
}

/// Packets that arrive while a request waits for its answer are kept for
/// `recv`, up to `max_kept_aside_bytes`: past it the request fails with
/// `Backlog` instead of letting a flooding server fill the client's memory,
/// and what was kept is still there to read.
#[tokio::test]
async fn a_request_keeps_aside_only_so_much() {
    let server = TestServer::start().await;
    let (mut bob, topic) = server.with_topic("bob", "lobby").await;
    server.register("dan", "hellosecret").await;
    let opts = tenthbit::client::Options {
        max_kept_aside_bytes: 1024,
        ..server.options(vec![Alpn::Plain])
    };
    let mut dan = Client::connect(&server.addr.to_string(), &opts)
        .await
        .unwrap();
    expect_op(&mut dan, "welcome").await;
    let ack = request(&mut dan, password_auth("dan", "hellosecret")).await;
    assert_eq!(ack.op, "ack", "{ack:?}");
    expect_op(&mut dan, "meta").await;
    expect_op(&mut dan, "meta").await;
    let joined = request(&mut dan, Packet::request("join").with("name", "lobby")).await;
    assert_eq!(joined.op, "meta", "{joined:?}");
    // Each relay to dan is queued before bob's next send is read: bob
    // waits for each ack.
    for i in 0..50 {
        let mut p = Packet::request("send").with("body", format!("message {i}"));
        p.topic = Some(topic.clone());
        let ack = request(&mut bob, p).await;
        assert_eq!(ack.op, "ack", "{ack:?}");
    }
    match dan.request(Packet::request("ping"), WAIT).await {
        Err(Error::Backlog(1024)) => {}
        other => panic!("expected a backlog error, got {other:?}"),
    }
    // What was kept is read in order (after any notice of dan's join).
    let kept = loop {
        let p = dan.recv_timeout(WAIT).await.unwrap();
        if p.op == "send" {
            break p;
        }
    };
    assert_eq!(kept.ex_str("body"), Some("message 0"), "{kept:?}");
    server.stop().await;
}

#[tokio::test]
async fn client_error_type_reports_closed() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    c.send(&Packet::request("quit")).await.unwrap();
    expect_op(&mut c, "ack").await;
    match c.recv_timeout(WAIT).await {
        Err(Error::Closed) => {}
        other => panic!("expected Closed, got {other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn packets_over_the_rate_are_refused_not_acted_on() {
    let server = TestServer::start_with(|c| {
        c.limits.packets_per_second = 1;
        c.limits.packet_burst = 3;
    })
    .await;
    let mut c = server.connect().await;
    expect_op(&mut c, "welcome").await;
    let mut batch = String::new();
    for i in 0..5 {
        batch.push_str(&format!("{{\"id\":\"r{i}\",\"op\":\"ping\"}}\n"));
    }
    c.send_raw(batch.as_bytes()).await.unwrap();
    for i in 0..3 {
        let p = expect_op(&mut c, "pong").await;
        assert_eq!(p.ex_str("for"), Some(format!("r{i}").as_str()));
    }
    for i in 3..5 {
        let p = expect_error(&mut c, "rate/limited").await;
        assert_eq!(p.ex_str("for"), Some(format!("r{i}").as_str()));
        let wait = p.ex.get("retry_after_ms").and_then(|v| v.as_u64()).unwrap();
        assert!((1..=1000).contains(&wait), "{wait}");
    }
    // `pong` (no reply, ever) and `quit` are never refused: the next thing
    // back is the ack for quit.
    c.send_raw(b"{\"op\":\"pong\",\"ex\":{\"for\":\"x\"}}\n{\"id\":\"q\",\"op\":\"quit\"}\n")
        .await
        .unwrap();
    let p = expect_op(&mut c, "ack").await;
    assert_eq!(p.ex_str("for"), Some("q"));
    expect_clean_close(&mut c).await;
    server.stop().await;
}

/// `pong` and `quit` take no rate token (protocol.md 9.5): a thousand pongs,
/// five times the burst, leave the token for the next ping.
#[tokio::test]
async fn pongs_spend_no_rate_tokens() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let pongs = b"{\"op\":\"pong\"}\n".repeat(1000);
    c.send_raw(&pongs).await.unwrap();
    let p = request(&mut c, Packet::request("ping").with_id("after-pongs")).await;
    assert_eq!(p.op, "pong", "{p:?}");
    server.stop().await;
}

/// A well-formed packet with an op the server does not know is answered
/// `op/unknown` and is not a protocol error: a newer client trying twice
/// `max_protocol_errors` ops this server lacks keeps its session.
#[tokio::test]
async fn unknown_ops_are_answered_and_do_not_count_as_protocol_errors() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    for i in 0..20 {
        let p = request(&mut c, Packet::request(&format!("future-{i}"))).await;
        assert_eq!(p.ex_str("code"), Some("op/unknown"), "{p:?}");
    }
    assert_alive(&mut c).await;
    server.stop().await;

    // Like any good packet, it resets the count of protocol errors.
    let server = TestServer::start_with(|c| c.limits.max_protocol_errors = 3).await;
    let mut c = server.client().await;
    for _ in 0..2 {
        c.send_raw(b"nope\n").await.unwrap();
        expect_error(&mut c, "packet/malformed").await;
        let p = request(&mut c, Packet::request("dance")).await;
        assert_eq!(p.ex_str("code"), Some("op/unknown"), "{p:?}");
    }
    c.send_raw(b"nope\n").await.unwrap();
    expect_error(&mut c, "packet/malformed").await;
    assert_alive(&mut c).await;
    server.stop().await;
}
