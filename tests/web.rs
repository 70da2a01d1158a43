//! ALPN `http/1.1` on the client port: the page, WebSocket sessions through
//! the same session code as 10bit, the origin policy, bad upgrades, the
//! header deadline and the connection limits, over real TLS on loopback.

mod common;

use std::sync::Arc;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tenthbit::proto::Packet;
use tenthbit::tls::{self, Alpn, Trust};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// A TLS connection offering `http/1.1` only.
async fn https(server: &TestServer) -> TlsStream<TcpStream> {
    let config = tls::client_config(&Trust::Fingerprint(server.fingerprint), &[Alpn::Http])
        .expect("client config");
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = TlsConnector::from(Arc::clone(&config))
        .connect(name, tcp)
        .await
        .expect("tls handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    tls
}

/// Sends a raw HTTP request (the head, `Connection: close` added) and
/// returns the status and the whole response text.
async fn http(server: &TestServer, head: &str) -> (u16, String) {
    let mut tls = https(server).await;
    let request = format!("{head}Connection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, tls.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    (status, text)
}

/// The head of a WebSocket upgrade request for `/ws`, with extra headers.
fn upgrade_head(extra: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}"
    )
}

/// A WebSocket session, `origin` sent when given; its `welcome` is read.
async fn websocket(server: &TestServer, origin: Option<&str>) -> Ws {
    let mut req = format!("wss://localhost:{}/ws", server.addr.port())
        .into_client_request()
        .expect("request");
    if let Some(o) = origin {
        req.headers_mut()
            .insert("Origin", HeaderValue::from_str(o).expect("origin"));
    }
    let (mut ws, response) = tokio_tungstenite::client_async(req, https(server).await)
        .await
        .expect("websocket handshake");
    assert_eq!(response.status(), 101);
    assert!(
        response.headers().get("Sec-WebSocket-Extensions").is_none(),
        "no compression"
    );
    let welcome = ws_recv(&mut ws).await;
    assert_eq!(welcome.op, "welcome");
    assert_eq!(welcome.ex_str("protocol"), Some("10bit/0.1"));
    ws
}

/// The next packet; each must be a text message holding one packet.
async fn ws_recv(ws: &mut Ws) -> Packet {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time")
            .expect("the stream is open")
            .expect("a good message");
        match message {
            Message::Text(text) => {
                assert!(!text.contains('\n'), "one packet per message: {text:?}");
                return Packet::decode(text.as_bytes(), 32).expect("a packet");
            }
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// The next packet, which must have `op`.
async fn ws_expect(ws: &mut Ws, op: &str) -> Packet {
    let p = ws_recv(ws).await;
    assert_eq!(p.op, op, "expected {op}, got {p:?}");
    p
}

async fn ws_send(ws: &mut Ws, p: &Packet) {
    let line = p.to_line();
    let text = std::str::from_utf8(&line)
        .expect("utf-8")
        .trim_end()
        .to_owned();
    ws.send(Message::text(text)).await.expect("send");
}

/// Sends `p` with id `id` and returns the next packet (the reply).
async fn ws_request(ws: &mut Ws, id: &str, p: Packet) -> Packet {
    ws_send(ws, &p.with_id(id)).await;
    let reply = ws_recv(ws).await;
    assert_eq!(reply.ex_str("for"), Some(id), "{reply:?}");
    reply
}

/// A request on `topic`.
fn on_topic(op: &str, topic: &str) -> Packet {
    let mut p = Packet::request(op);
    p.topic = Some(topic.to_owned());
    p
}

/// Logs in over the WebSocket and consumes the login sequence.
async fn ws_login(ws: &mut Ws, name: &str, password: &str) {
    let ack = ws_request(ws, "login", password_auth(name, password)).await;
    assert_eq!(ack.op, "ack", "{ack:?}");
    ws_expect(ws, "meta").await;
    ws_expect(ws, "meta").await;
}

#[tokio::test]
async fn the_page_is_served_over_alpn_http() {
    let server = TestServer::start().await;
    let (status, text) = http(&server, "GET / HTTP/1.1\r\nHost: localhost\r\n").await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("text/html"), "{text}");
    assert!(text.contains("<!doctype html>"), "{text}");
    assert!(
        text.contains("content-security-policy: default-src 'self'"),
        "{text}"
    );
    let (status, text) = http(&server, "GET /app.js HTTP/1.1\r\nHost: localhost\r\n").await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("text/javascript"), "{text}");
    let (status, text) = http(&server, "GET /nothing HTTP/1.1\r\nHost: localhost\r\n").await;
    assert_eq!(status, 404);
    assert!(text.contains("\r\n\r\nhttp/not-found "), "{text}");
    let (status, text) = http(
        &server,
        "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n",
    )
    .await;
    assert_eq!(status, 405);
    assert!(text.contains("http/method-not-allowed"), "{text}");
    // No ALPN at all is still 10bit.
    let mut c = server.connect_alpn(vec![]).await;
    assert_eq!(
        expect_op(&mut c, "welcome").await.ex_str("protocol"),
        Some("10bit/0.1")
    );
    server.stop().await;
}

#[tokio::test]
async fn a_websocket_session_and_a_10bit_session_talk() {
    let server = TestServer::start().await;
    server.register("dan", "hellosecret").await;
    server.register("bob", "bobsecret1").await;
    let mut dan = server.login("dan", "hellosecret").await;
    let created = request(&mut dan, Packet::request("create").with("name", "lobby")).await;
    let topic = created.topic.expect("topic id");

    let mut ws = websocket(&server, None).await;
    ws_login(&mut ws, "bob", "bobsecret1").await;
    let joined = ws_request(&mut ws, "j1", Packet::request("join").with("name", "lobby")).await;
    assert_eq!(joined.op, "meta", "{joined:?}");
    assert_eq!(joined.topic.as_deref(), Some(topic.as_str()));
    expect_op(&mut dan, "join").await;

    let send = on_topic("send", &topic).with("body", "hello from the web");
    assert_eq!(ws_request(&mut ws, "s1", send).await.op, "ack");
    let got = expect_op(&mut dan, "send").await;
    assert_eq!(got.from.as_deref(), Some("bob"));
    assert_eq!(got.ex_str("body"), Some("hello from the web"));

    let send = on_topic("send", &topic).with("body", "hello from 10bit");
    assert_eq!(request(&mut dan, send).await.op, "ack");
    let got = ws_expect(&mut ws, "send").await;
    assert_eq!(got.from.as_deref(), Some("dan"));
    assert_eq!(got.ex_str("body"), Some("hello from 10bit"));

    // The same reply rule and errors as 10bit.
    let e = ws_request(&mut ws, "u1", Packet::request("nonsense")).await;
    assert_eq!(e.ex_str("code"), Some("op/unknown"));
    let quit = ws_request(&mut ws, "q", Packet::request("quit")).await;
    assert_eq!(quit.op, "ack");
    server.stop().await;
}

#[tokio::test]
async fn over_long_and_binary_messages_get_errors_and_the_session_goes_on() {
    let server = TestServer::start_with(|c| {
        c.limits.max_line_bytes = 1024;
        c.limits.max_meta_value_bytes = 512;
        c.web.max_message_bytes = 4096;
    })
    .await;
    let mut ws = websocket(&server, None).await;
    ws.send(Message::text("x".repeat(2000)))
        .await
        .expect("send");
    let e = ws_expect(&mut ws, "error").await;
    assert_eq!(e.ex_str("code"), Some("packet/too-large"), "{e:?}");
    ws.send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send");
    let e = ws_expect(&mut ws, "error").await;
    assert_eq!(e.ex_str("code"), Some("transport/binary-frame"), "{e:?}");
    let pong = ws_request(&mut ws, "p1", Packet::request("ping")).await;
    assert_eq!(pong.op, "pong");

    // Beyond web.max_message_bytes the connection is closed, with a reason.
    ws.send(Message::text("y".repeat(5000)))
        .await
        .expect("send");
    let bye = ws_expect(&mut ws, "bye").await;
    assert_eq!(bye.ex_str("code"), Some("packet/too-large"), "{bye:?}");
    server.stop().await;
}

#[tokio::test]
async fn bad_upgrades_are_refused_with_a_code() {
    let server = TestServer::start().await;
    let (status, text) = http(&server, "GET /ws HTTP/1.1\r\nHost: localhost\r\n").await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("\r\n\r\nhttp/bad-upgrade "), "{text}");
    let head = upgrade_head("").replace(
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Key: short",
    );
    let (status, text) = http(&server, &head).await;
    assert_eq!(status, 400, "{text}");
    let head = upgrade_head("").replace("Version: 13", "Version: 8");
    let (status, text) = http(&server, &head).await;
    assert_eq!(status, 426, "{text}");
    assert!(text.contains("sec-websocket-version: 13"), "{text}");
    assert!(text.contains("http/bad-upgrade"), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn origins_follow_the_policy() {
    let server = TestServer::start_with(|c| {
        c.web.allowed_origins = vec!["https://app.example.org".into()];
    })
    .await;
    let (status, text) = http(&server, &upgrade_head("Origin: https://evil.example\r\n")).await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("\r\n\r\nhttp/forbidden-origin "), "{text}");
    let (status, _) = http(&server, &upgrade_head("Origin: null\r\n")).await;
    assert_eq!(status, 403);
    // Same origin (Host is localhost:<port>), the allowlist, and none at all.
    let same = format!("https://localhost:{}", server.addr.port());
    let mut ws = websocket(&server, Some(&same)).await;
    assert_eq!(
        ws_request(&mut ws, "p", Packet::request("ping")).await.op,
        "pong"
    );
    let mut ws = websocket(&server, Some("https://app.example.org")).await;
    assert_eq!(
        ws_request(&mut ws, "p", Packet::request("ping")).await.op,
        "pong"
    );
    let mut ws = websocket(&server, None).await;
    assert_eq!(
        ws_request(&mut ws, "p", Packet::request("ping")).await.op,
        "pong"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_slow_header_client_is_cut() {
    let server = TestServer::start_with(|c| c.web.header_timeout_ms = 300).await;
    let mut tls = https(&server).await;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: loc")
        .await
        .expect("write");
    // The server closes; the test waits for that, never for a fixed time.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(WAIT, tls.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the connection stayed open");
    let text = String::from_utf8_lossy(&rest);
    assert!(!text.contains("200 OK"), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn web_clients_count_against_connection_limits() {
    let server = TestServer::start_with(|c| c.limits.max_connections_per_ip = 1).await;
    let mut ws = websocket(&server, None).await;
    let mut c = server.connect().await;
    expect_bye(&mut c, "server/per-ip-limit").await;
    let (status, text) = http(&server, "GET / HTTP/1.1\r\nHost: localhost\r\n").await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("server/per-ip-limit"), "{text}");
    assert_eq!(
        ws_request(&mut ws, "p", Packet::request("ping")).await.op,
        "pong"
    );
    server.stop().await;
}

#[tokio::test]
async fn web_traffic_shows_in_the_metrics() {
    let server = TestServer::start_with(|c| {
        c.ops.enabled = true;
        c.ops.listen = "127.0.0.1:0".parse().expect("addr");
    })
    .await;
    let ops = server.handle.ops_addr().expect("ops listener");
    let mut ws = websocket(&server, None).await;
    assert_eq!(
        ws_request(&mut ws, "p", Packet::request("ping")).await.op,
        "pong"
    );
    ws.send(Message::binary(vec![0u8])).await.expect("send");
    ws_expect(&mut ws, "error").await;
    assert_eq!(
        http(&server, "GET /nothing HTTP/1.1\r\nHost: localhost\r\n")
            .await
            .0,
        404
    );
    let (_, scrape) = plain_get(ops, "/metrics").await;
    for (series, expected) in [
        ("tenthbit_connections_total{transport=\"websocket\"}", 1.0),
        ("tenthbit_connections_open{transport=\"websocket\"}", 1.0),
        ("tenthbit_connections_total{transport=\"http\"}", 2.0),
        (
            "tenthbit_errors_total{code=\"transport/binary-frame\"}",
            1.0,
        ),
        ("tenthbit_errors_total{code=\"http/not-found\"}", 1.0),
        ("tenthbit_packets_in_total", 2.0),
    ] {
        assert_eq!(sample(&scrape, series), expected, "{series}:\n{scrape}");
    }
    server.stop().await;
}

#[tokio::test]
async fn http_is_not_offered_when_disabled() {
    let server = TestServer::start_with(|c| c.web.enabled = false).await;
    let config = tls::client_config(&Trust::Fingerprint(server.fingerprint), &[Alpn::Http])
        .expect("client config");
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let refused = TlsConnector::from(config).connect(name, tcp).await;
    assert!(
        refused.is_err(),
        "the handshake offering only http/1.1 must fail"
    );
    let mut c = server.connect_alpn(vec![]).await;
    expect_op(&mut c, "welcome").await;
    server.stop().await;
}

/// Input that needs no reply (blank messages, `pong` packets, WebSocket
/// ping frames) is charged to the silent-input allowance (protocol.md 9.6)
/// as on a 10bit connection: past it, `bye` with `rate/silent-input`, and
/// the `ping` behind it is never answered.
#[tokio::test]
async fn silent_input_on_a_websocket_is_limited() {
    let kinds: [(&str, Message); 3] = [
        ("blank messages", Message::text("                ")),
        ("pong packets", Message::text("{\"op\":\"pong\"}")),
        ("ping frames", Message::Ping(vec![7u8; 16].into())),
    ];
    for (kind, message) in kinds {
        let server = TestServer::start_with(|c| c.limits.silent_burst_bytes = 4096).await;
        let mut ws = websocket(&server, None).await;
        // About 10 KB charged against 4 KiB.
        for _ in 0..600 {
            ws.feed(message.clone()).await.expect("feed");
        }
        ws.feed(Message::text("{\"op\":\"ping\",\"id\":\"after\"}"))
            .await
            .expect("feed");
        ws.flush().await.expect("flush");
        let p = ws_recv(&mut ws).await;
        assert_eq!(p.op, "bye", "{kind}: {p:?}");
        assert_eq!(p.ex_str("code"), Some("rate/silent-input"), "{kind}: {p:?}");
        server.stop().await;
    }
}

/// An `Origin` that is there but not visible ASCII is refused, not taken
/// for a missing one.
#[tokio::test]
async fn an_unreadable_origin_is_refused() {
    let server = TestServer::start().await;
    let mut tls = https(&server).await;
    let mut req = upgrade_head("").into_bytes();
    req.extend_from_slice(b"Origin: https://evil.example\xc3\xa9\r\nConnection: close\r\n\r\n");
    tls.write_all(&req).await.expect("write");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, tls.read(&mut buf))
        .await
        .expect("in time")
        .expect("read");
    let text = String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned();
    assert!(text.starts_with("HTTP/1.1 403"), "{text}");
    assert!(text.contains("http/forbidden-origin"), "{text}");
    server.stop().await;
}

/// A client that sends requests and never reads the answers is cut after
/// `write_timeout_ms`, freeing its place in the connection limits.
#[tokio::test]
async fn an_http_client_that_never_reads_is_cut() {
    let server = TestServer::start_with(|c| {
        c.limits.max_connections_per_ip = 1;
        c.limits.write_timeout_ms = 300;
    })
    .await;
    let config = tls::client_config(&Trust::Fingerprint(server.fingerprint), &[Alpn::Http])
        .expect("client config");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let tcp = socket.connect(server.addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut stuck = TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .expect("tls handshake");
    // Far more answer than both sides' buffers hold; once the server's
    // writes block it reads no more, so this write may never finish.
    let requests = "GET /app.js HTTP/1.1\r\nHost: localhost\r\n\r\n".repeat(3000);
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        stuck.write_all(requests.as_bytes()),
    )
    .await;
    // Polling a condition: the one place this address has is free again.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut c = server.connect().await;
        let p = c.recv_timeout(WAIT).await.expect("welcome or bye");
        if p.op == "welcome" {
            break;
        }
        assert_eq!(p.ex_str("code"), Some("server/per-ip-limit"), "{p:?}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the client that never reads still holds its place"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    drop(stuck);
    server.stop().await;
}

/// An HTTP connection that has not upgraded within the login timeout is
/// closed, however often it asks for something.
#[tokio::test]
async fn an_http_connection_that_never_upgrades_ends_at_the_login_timeout() {
    let server = TestServer::start_with(|c| {
        c.limits.login_timeout_ms = 500;
        c.web.header_timeout_ms = 1_000;
    })
    .await;
    let mut tls = https(&server).await;
    let started = std::time::Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    let closed = loop {
        // Requests well inside the header deadline, as a page's would be.
        if tls
            .write_all(b"GET /style.css HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .is_err()
        {
            break true;
        }
        match tokio::time::timeout(WAIT, tls.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break true,
            Ok(Ok(_)) => {}
            Err(_) => panic!("no answer and no close"),
        }
        if started.elapsed() > WAIT {
            break false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(
        closed,
        "still served {:?} after the handshake",
        started.elapsed()
    );
    server.stop().await;
}

/// What the HTTP layer answers itself, before any route (protocol.md 4a):
/// `400` for a request that does not parse, `431` for a head over 16 KiB,
/// each without a body, and the connection closed.
#[tokio::test]
async fn unparsable_and_oversized_heads_get_400_and_431() {
    let server = TestServer::start().await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: localhost\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(20 * 1024)
    );
    for (request, status) in [
        ("NOT HTTP AT ALL\r\n\r\n".to_owned(), "HTTP/1.1 400"),
        (big, "HTTP/1.1 431"),
    ] {
        let mut tls = https(&server).await;
        let _ = tls.write_all(request.as_bytes()).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(WAIT, tls.read_to_end(&mut answer))
            .await
            .expect("answered and closed in time");
        let text = String::from_utf8_lossy(&answer).into_owned();
        assert!(text.starts_with(status), "{status}: {text:?}");
    }
    server.stop().await;
}
