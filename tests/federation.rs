//! Federation (protocol.md §18): two independent servers in this process,
//! `first.example` and `second.example`, each with its own store and
//! certificate; users of the first log in on the second with tickets the
//! first issued and bound to the second.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use common::{TestServer, expect_op, on, request};
use tenthbit::client::Client;
use tenthbit::federation::config::ServerEntry;
use tenthbit::proto::Packet;
use tenthbit::tls::pin::format_fingerprint;
use tenthbit::{Config, tls};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const FIRST: &str = "first.example";
const SECOND: &str = "second.example";
const KEY: &str = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";

/// Everything any server in this test binary logs, at every level.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        buf
    })
    .clone()
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_text() -> String {
    String::from_utf8_lossy(&captured_logs().lock().unwrap()).into_owned()
}

/// A data directory holding a certificate for `name` made beforehand (so
/// the other server can pin it before this one starts), and its SHA-256.
fn cert_dir(name: &str) -> (tempfile::TempDir, [u8; 32]) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert, key) = (
        dir.path().join("certs/server.crt"),
        dir.path().join("certs/server.key"),
    );
    tls::selfsigned::generate(name, &cert, &key).expect("certificate");
    let id = tls::load_identity(&cert, &key, false, name).expect("identity");
    (dir, id.fingerprint)
}

/// A copy of `dir`'s certificate in a new directory (a second server with
/// the same identity).
fn same_cert(dir: &tempfile::TempDir) -> tempfile::TempDir {
    let copy = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(copy.path().join("certs")).unwrap();
    for f in ["certs/server.crt", "certs/server.key"] {
        std::fs::copy(dir.path().join(f), copy.path().join(f)).unwrap();
    }
    copy
}

fn entry(name: &str, addr: Option<SocketAddr>, fp: [u8; 32]) -> ServerEntry {
    ServerEntry {
        name: name.into(),
        addr,
        fingerprint: Some(format_fingerprint(&fp)),
        ca_file: None,
    }
}

fn federate(c: &mut Config, name: &str, servers: Vec<ServerEntry>) {
    c.server.name = name.into();
    c.federation.enabled = true;
    c.federation.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    c.federation.servers = servers;
}

fn fed_addr(s: &TestServer) -> SocketAddr {
    s.handle.federation().expect("federation on").local_addr()
}

struct Pair {
    first: TestServer,
    second: TestServer,
}

/// `first.example` (the home server) answering `second.example`, which
/// asks it; `tweak_*` adjust each config last.
async fn pair(
    tweak_first: impl FnOnce(&mut Config),
    tweak_second: impl FnOnce(&mut Config),
) -> Pair {
    captured_logs();
    let (d1, fp1) = cert_dir(FIRST);
    let (d2, fp2) = cert_dir(SECOND);
    let first = TestServer::start_in(d1, |c| {
        federate(c, FIRST, vec![entry(SECOND, None, fp2)]);
        tweak_first(c);
    })
    .await;
    let home = fed_addr(&first);
    let second = TestServer::start_in(d2, |c| {
        federate(c, SECOND, vec![entry(FIRST, Some(home), fp1)]);
        tweak_second(c);
    })
    .await;
    Pair { first, second }
}

fn ticket_auth(ticket: &str, server: &str) -> Packet {
    Packet::request("auth")
        .with("method", "ticket")
        .with("ticket", ticket)
        .with("server", server)
}

/// A ticket for the logged-in account of `c`, bound to `server`.
async fn ticket_for(c: &mut Client, server: Option<&str>) -> String {
    let mut req = Packet::request("ticket");
    if let Some(s) = server {
        req = req.with("server", s);
    }
    let p = request(c, req).await;
    assert_eq!(p.op, "ticket", "{p:?}");
    p.ex_str("ticket").expect("ticket").to_owned()
}

/// `name` (registered on the first server) logged in on the second: the
/// client, and the packets of its login sequence.
async fn federated_login(p: &Pair, name: &str) -> (Client, Vec<Packet>) {
    let mut home = p.first.login(name, &password(name)).await;
    let ticket = ticket_for(&mut home, Some(SECOND)).await;
    let mut c = p.second.client().await;
    let ack = request(&mut c, ticket_auth(&ticket, FIRST)).await;
    assert_eq!(ack.op, "ack", "{ack:?}");
    let server = expect_op(&mut c, "meta").await;
    let own = expect_op(&mut c, "meta").await;
    (c, vec![ack, server, own])
}

fn password(name: &str) -> String {
    format!("{name}-secret-password")
}

async fn register(s: &TestServer, names: &[&str]) {
    for n in names {
        s.register(n, &password(n)).await;
    }
}

async fn expect_code(c: &mut Client, req: Packet, code: &str) -> Packet {
    let p = request(c, req).await;
    assert_eq!(p.op, "error", "{p:?}");
    assert_eq!(p.ex_str("code"), Some(code), "{p:?}");
    p
}

fn text(p: &Packet) -> String {
    String::from_utf8_lossy(&p.to_line()).into_owned()
}

#[tokio::test]
async fn a_ticket_bound_to_the_second_server_logs_in_there_once() {
    let p = pair(|_| {}, |_| {}).await;
    register(&p.first, &["dan"]).await;
    register(&p.second, &["bob"]).await;
    let mut bob = p.second.login("bob", &password("bob")).await;
    let created = request(&mut bob, Packet::request("create").with("name", "lobby")).await;
    assert_eq!(created.op, "meta", "{created:?}");

    let mut home = p.first.login("dan", &password("dan")).await;
    let ticket = ticket_for(&mut home, Some(SECOND)).await;
    let mut dan = p.second.client().await;
    let mut replies = Vec::new();
    let ack = request(&mut dan, ticket_auth(&ticket, FIRST)).await;
    assert_eq!(ack.op, "ack", "{ack:?}");
    let server = expect_op(&mut dan, "meta").await;
    assert_eq!(server.from.as_deref(), Some("@second.example"));
    let own = expect_op(&mut dan, "meta").await;
    assert_eq!(own.from.as_deref(), Some("dan@first.example"));
    let who = request(&mut dan, Packet::request("whoami")).await;
    assert_eq!(who.ex_str("account"), Some("dan@first.example"), "{who:?}");
    replies.extend([ack, server, own, who]);

    // An open topic: join, send, and the others see `dan@first.example`.
    let joined = request(&mut dan, Packet::request("join").with("name", "lobby")).await;
    assert_eq!(joined.op, "meta", "{joined:?}");
    let members = joined.ex.get("members").expect("members").to_string();
    assert!(members.contains("\"dan@first.example\""), "{members}");
    let event = expect_op(&mut bob, "join").await;
    assert_eq!(event.from.as_deref(), Some("dan@first.example"));
    let topic = joined.topic.clone().expect("topic");
    let sent = request(&mut dan, on("send", &topic).with("body", "hello from afar")).await;
    assert_eq!(sent.op, "ack", "{sent:?}");
    let got = expect_op(&mut bob, "send").await;
    assert_eq!(got.from.as_deref(), Some("dan@first.example"));
    assert_eq!(got.ex_str("body"), Some("hello from afar"));
    replies.extend([joined, sent]);

    // The same ticket a second time: spent at home.
    let mut again = p.second.client().await;
    replies.push(expect_code(&mut again, ticket_auth(&ticket, FIRST), "ticket/invalid").await);

    // No password, keys or tickets of its own here.
    for req in [
        Packet::request("delete-account").with("password", "anything-at-all"),
        Packet::request("key-add").with("key", KEY),
        Packet::request("ticket").with("server", FIRST),
    ] {
        replies.push(expect_code(&mut dan, req, "account/federated").await);
    }
    let mut by_password = p.second.client().await;
    replies.push(
        expect_code(
            &mut by_password,
            common::password_auth("dan@first.example", "anything-at-all"),
            "auth/failed",
        )
        .await,
    );
    // Still logged in and in sync.
    common::assert_alive(&mut dan).await;

    // Neither side wrote the ticket or a password anywhere but the
    // ticket's own answer.
    for r in &replies {
        let t = text(r);
        assert!(
            !t.contains(&ticket) && !t.contains("secret-password"),
            "{t}"
        );
    }
    let logs = log_text();
    assert!(logs.contains("federated login"), "logs are captured");
    assert!(logs.contains("redeemed a ticket for another server"));
    assert!(!logs.contains(&ticket), "a ticket was logged");
    assert!(!logs.contains("secret-password"), "a password was logged");
}

#[tokio::test]
async fn tickets_that_must_not_log_in_abroad() {
    let p = pair(|_| {}, |_| {}).await;
    register(&p.first, &["dan"]).await;
    let mut home = p.first.login("dan", &password("dan")).await;
    let third = ticket_for(&mut home, Some("third.example")).await;
    let unbound = ticket_for(&mut home, None).await;
    let good = ticket_for(&mut home, Some(SECOND)).await;

    let mut c = p.second.client().await;
    // Bound to a third server, or to none: refused at home, the same
    // answer as an unknown ticket.
    expect_code(&mut c, ticket_auth(&third, FIRST), "ticket/invalid").await;
    expect_code(&mut c, ticket_auth(&unbound, FIRST), "ticket/invalid").await;
    expect_code(&mut c, ticket_auth("NOSUCHTICKET", FIRST), "ticket/invalid").await;
    // A server this one does not federate with is never asked, so the
    // ticket is not spent.
    expect_code(
        &mut c,
        ticket_auth(&good, "nowhere.example"),
        "ticket/unknown-server",
    )
    .await;
    let ack = request(&mut c, ticket_auth(&good, FIRST)).await;
    assert_eq!(ack.op, "ack", "{ack:?}");
    // The unbound ticket was spent by the attempt abroad.
    let mut here = p.first.client().await;
    expect_code(&mut here, ticket_auth(&unbound, FIRST), "ticket/invalid").await;

    // An expired ticket.
    let p = pair(|c| c.auth.ticket_ttl_ms = 1, |_| {}).await;
    register(&p.first, &["dan"]).await;
    let mut home = p.first.login("dan", &password("dan")).await;
    let expired = ticket_for(&mut home, Some(SECOND)).await;
    let mut c = p.second.client().await;
    expect_code(&mut c, ticket_auth(&expired, FIRST), "ticket/invalid").await;
}

#[tokio::test]
async fn a_home_server_down_or_not_the_pinned_one_is_unavailable() {
    captured_logs();
    let (d1, fp1) = cert_dir(FIRST);
    let (d2, fp2) = cert_dir(SECOND);
    let d2_again = same_cert(&d2);
    let (d3, fp3) = cert_dir("third.example");
    let first = TestServer::start_in(d1, |c| {
        federate(c, FIRST, vec![entry(SECOND, None, fp2)]);
    })
    .await;
    let home = fed_addr(&first);
    register(&first, &["dan"]).await;
    let mut dan = first.login("dan", &password("dan")).await;
    let ticket = ticket_for(&mut dan, Some(SECOND)).await;

    // The second server pins another certificate for the first.
    let wrong = TestServer::start_in(d2, |c| {
        federate(c, SECOND, vec![entry(FIRST, Some(home), fp3)]);
    })
    .await;
    let mut c = wrong.client().await;
    expect_code(&mut c, ticket_auth(&ticket, FIRST), "ticket/unavailable").await;
    wrong.stop().await;

    // A third server the first does not list: refused at TLS.
    let third = TestServer::start_in(d3, |c| {
        federate(c, "third.example", vec![entry(FIRST, Some(home), fp1)]);
    })
    .await;
    let third_ticket = ticket_for(&mut dan, Some("third.example")).await;
    let mut c = third.client().await;
    expect_code(
        &mut c,
        ticket_auth(&third_ticket, FIRST),
        "ticket/unavailable",
    )
    .await;

    // Neither spent the ticket: the second, configured right, logs in.
    let right = TestServer::start_in(d2_again, |c| {
        federate(c, SECOND, vec![entry(FIRST, Some(home), fp1)]);
    })
    .await;
    let mut c = right.client().await;
    let ack = request(&mut c, ticket_auth(&ticket, FIRST)).await;
    assert_eq!(ack.op, "ack", "{ack:?}");

    // The first goes down.
    let another = ticket_for(&mut dan, Some(SECOND)).await;
    first.stop().await;
    let mut c = right.client().await;
    expect_code(&mut c, ticket_auth(&another, FIRST), "ticket/unavailable").await;
    let logs = log_text();
    assert!(logs.contains("fed/bad-certificate"), "mismatch is logged");
    assert!(logs.contains("fed/unreachable"), "down is logged");
    assert!(!logs.contains(&ticket) && !logs.contains(&another));
}

/// A fake home server for `second.example`: answers the first request with
/// `answer`, and never answers the second.
async fn fake_home(
    fp_second: [u8; 32],
    answer: &'static str,
) -> (SocketAddr, [u8; 32], tempfile::TempDir) {
    use tenthbit::tls::mesh::{Peer, PeerCert, acceptor_config_for};
    let (dir, fp) = cert_dir(FIRST);
    let id = tls::load_identity(
        &dir.path().join("certs/server.crt"),
        &dir.path().join("certs/server.key"),
        false,
        FIRST,
    )
    .unwrap();
    let peers = [Peer {
        node: SECOND.into(),
        cert: PeerCert::Fingerprint(fp_second),
    }];
    let config = acceptor_config_for(&id, &peers, tenthbit::federation::wire::ALPN).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        for n in 0.. {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let Ok(tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let mut tls = BufReader::new(tls);
            let mut line = String::new();
            tls.read_line(&mut line).await.unwrap();
            assert!(line.starts_with("{\"op\":\"fed.redeem\""), "{line}");
            assert!(line.contains("\"server\":\"second.example\""), "{line}");
            if n == 0 {
                tls.get_mut().write_all(answer.as_bytes()).await.unwrap();
                tls.get_mut().flush().await.unwrap();
            } else {
                // A slow home server: holds the connection, says nothing.
                held.push(tls);
            }
        }
    });
    (addr, fp, dir)
}

#[tokio::test]
async fn a_home_server_that_answers_wrong_or_late_is_not_believed() {
    captured_logs();
    let (d2, fp2) = cert_dir(SECOND);
    let (addr, fp, _dir) = fake_home(
        fp2,
        "{\"op\":\"fed.answer\",\"ex\":{\"account\":\"mallory@third.example\"}}\n",
    )
    .await;
    let second = TestServer::start_in(d2, |c| {
        federate(c, SECOND, vec![entry(FIRST, Some(addr), fp)]);
        c.federation.timeout_ms = 500;
    })
    .await;
    let mut c = second.client().await;
    expect_code(
        &mut c,
        ticket_auth("SOMETICKET1", FIRST),
        "ticket/bad-answer",
    )
    .await;
    expect_code(
        &mut c,
        ticket_auth("SOMETICKET2", FIRST),
        "ticket/unavailable",
    )
    .await;
    let who = request(&mut c, Packet::request("whoami")).await;
    assert_eq!(who.ex.get("account"), Some(&serde_json::Value::Null));
    let logs = log_text();
    assert!(logs.contains("fed/bad-answer") && logs.contains("fed/timeout"));
}

#[tokio::test]
async fn redemption_floods_are_limited() {
    let p = pair(|_| {}, |c| c.federation.client_attempts_per_minute = 2).await;
    let mut c = p.second.client().await;
    expect_code(
        &mut c,
        ticket_auth("NOSUCHTICKET1", FIRST),
        "ticket/invalid",
    )
    .await;
    expect_code(
        &mut c,
        ticket_auth("NOSUCHTICKET2", FIRST),
        "ticket/invalid",
    )
    .await;
    let limited = expect_code(&mut c, ticket_auth("NOSUCHTICKET3", FIRST), "rate/limited").await;
    assert!(limited.ex.get("retry_after_ms").is_some(), "{limited:?}");
    // Another connection has its own allowance.
    let mut d = p.second.client().await;
    expect_code(
        &mut d,
        ticket_auth("NOSUCHTICKET4", FIRST),
        "ticket/invalid",
    )
    .await;

    // The home side limits each asking server.
    let p = pair(|c| c.federation.requests_per_minute = 1, |_| {}).await;
    let mut c = p.second.client().await;
    expect_code(
        &mut c,
        ticket_auth("NOSUCHTICKET5", FIRST),
        "ticket/invalid",
    )
    .await;
    expect_code(
        &mut c,
        ticket_auth("NOSUCHTICKET6", FIRST),
        "ticket/unavailable",
    )
    .await;
    assert!(log_text().contains("fed/rate-limited"));
}

fn acl(topic: &str, subject: &str, grant: &[&str], revoke: &[&str]) -> Packet {
    on("acl", topic)
        .with("subject", subject)
        .with("grant", serde_json::json!(grant))
        .with("revoke", serde_json::json!(revoke))
}

async fn ok(c: &mut Client, req: Packet, op: &str) -> Packet {
    let p = request(c, req).await;
    assert_eq!(p.op, op, "{p:?}");
    p
}

#[tokio::test]
async fn acls_grant_and_ban_federated_users_by_name_and_server() {
    let p = pair(|_| {}, |_| {}).await;
    register(&p.first, &["dan", "carol"]).await;
    register(&p.second, &["bob"]).await;
    let mut bob = p.second.login("bob", &password("bob")).await;
    ok(
        &mut bob,
        Packet::request("create").with("name", "open"),
        "meta",
    )
    .await;
    let (mut dan, _) = federated_login(&p, "dan").await;
    let (mut carol, _) = federated_login(&p, "carol").await;
    // `*` includes them by default; creating topics follows the server ACL.
    ok(
        &mut dan,
        Packet::request("create").with("name", "dans"),
        "meta",
    )
    .await;
    // A ban of their server, then of one of them.
    ok(
        &mut bob,
        acl("open", "@first.example", &["ban"], &[]),
        "ack",
    )
    .await;
    expect_code(
        &mut dan,
        Packet::request("join").with("name", "open"),
        "acl/denied",
    )
    .await;
    ok(
        &mut bob,
        acl("open", "@first.example", &[], &["ban"]),
        "ack",
    )
    .await;
    ok(
        &mut bob,
        acl("open", "dan@first.example", &["ban"], &[]),
        "ack",
    )
    .await;
    expect_code(
        &mut dan,
        Packet::request("join").with("name", "open"),
        "acl/denied",
    )
    .await;
    ok(
        &mut carol,
        Packet::request("join").with("name", "open"),
        "meta",
    )
    .await;
    let shown = ok(&mut bob, on("acl", "open"), "acl").await;
    let shown = shown.ex.get("acl").unwrap().to_string();
    assert!(
        shown.contains("[\"dan@first.example\",[\"ban\"]]"),
        "{shown}"
    );

    // An operator who keeps `*` to local accounts: only entries naming
    // them (by name or by server) let them in.
    let p = pair(|_| {}, |c| c.federation.star_includes_foreign = false).await;
    register(&p.first, &["dan", "carol"]).await;
    register(&p.second, &["bob"]).await;
    let mut bob = p.second.login("bob", &password("bob")).await;
    let t = ok(
        &mut bob,
        Packet::request("create").with("name", "open"),
        "meta",
    )
    .await;
    let topic = t.topic.unwrap();
    let (mut dan, _) = federated_login(&p, "dan").await;
    let (mut carol, _) = federated_login(&p, "carol").await;
    expect_code(
        &mut dan,
        Packet::request("create").with("name", "dans"),
        "acl/denied",
    )
    .await;
    expect_code(
        &mut dan,
        Packet::request("join").with("name", "open"),
        "acl/denied",
    )
    .await;
    ok(
        &mut bob,
        acl("open", "dan@first.example", &["read"], &[]),
        "ack",
    )
    .await;
    ok(
        &mut dan,
        Packet::request("join").with("name", "open"),
        "meta",
    )
    .await;
    expect_code(
        &mut dan,
        on("send", &topic).with("body", "hi"),
        "acl/denied",
    )
    .await;
    expect_code(
        &mut carol,
        Packet::request("join").with("name", "open"),
        "acl/denied",
    )
    .await;
    ok(
        &mut bob,
        acl("open", "@first.example", &["read", "write"], &[]),
        "ack",
    )
    .await;
    ok(&mut dan, on("send", &topic).with("body", "hi"), "ack").await;
    ok(
        &mut carol,
        Packet::request("join").with("name", "open"),
        "meta",
    )
    .await;
}

/// A server pinned by fingerprint whose certificate also names another
/// server, one trusted through a CA, is identified as itself: it cannot
/// redeem the other server's tickets. The CA-trusted server, its
/// certificate from its own CA, is recognised and can.
#[tokio::test]
async fn a_server_is_identified_by_its_own_trust_rule() {
    use tenthbit::tls::mesh::{Peer, PeerCert, dialer_config_for};
    captured_logs();
    let (d1, fp1) = cert_dir(FIRST);
    // second.example is trusted through its operator's CA.
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_path = ca_dir.path().join("ca.pem");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    std::fs::write(&ca_path, ca.pem()).unwrap();
    // evil.example is pinned; its self-signed certificate also names second.example.
    let evil_dir = tempfile::tempdir().unwrap();
    let (ecert, ekey) = (evil_dir.path().join("e.crt"), evil_dir.path().join("e.key"));
    let params = rcgen::CertificateParams::new(vec![
        "evil.example".to_string(),
        "second.example".to_string(),
    ])
    .unwrap();
    let k = rcgen::KeyPair::generate().unwrap();
    let c = params.self_signed(&k).unwrap();
    std::fs::write(&ecert, c.pem()).unwrap();
    std::fs::write(&ekey, k.serialize_pem()).unwrap();
    let evil = tls::load_identity(&ecert, &ekey, false, "evil.example").unwrap();
    let ca_file = ca_path.clone();
    let first = TestServer::start_in(d1, |c| {
        federate(
            c,
            FIRST,
            vec![
                ServerEntry {
                    name: SECOND.into(),
                    addr: None,
                    fingerprint: None,
                    ca_file: Some(ca_file),
                },
                entry("evil.example", None, evil.fingerprint),
            ],
        );
    })
    .await;
    register(&first, &["dan"]).await;
    let mut dan = first.login("dan", &password("dan")).await;
    let ticket = ticket_for(&mut dan, Some(SECOND)).await;
    let peer = Peer {
        node: FIRST.into(),
        cert: PeerCert::Fingerprint(fp1),
    };
    // Asks `first` to redeem the ticket for second.example, as `identity`.
    let redeem = |identity: tls::Identity| {
        let cfg = dialer_config_for(&identity, &peer, tenthbit::federation::wire::ALPN).unwrap();
        let (addr, ticket) = (fed_addr(&first), ticket.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from(FIRST).unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await
                .unwrap();
            let line = format!(
                "{{\"op\":\"fed.redeem\",\"ex\":{{\"server\":\"second.example\",\"ticket\":\"{ticket}\"}}}}\n"
            );
            tls.write_all(line.as_bytes()).await.unwrap();
            tls.flush().await.unwrap();
            let mut answer = String::new();
            BufReader::new(tls).read_line(&mut answer).await.unwrap();
            answer
        }
    };
    let answer = redeem(evil).await;
    assert!(
        answer.contains("fed/server-mismatch"),
        "evil.example was taken for second.example: {answer}"
    );
    // The real second.example, its certificate from its CA, is recognised.
    let (scert, skey) = (evil_dir.path().join("s.crt"), evil_dir.path().join("s.key"));
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let k = rcgen::KeyPair::generate().unwrap();
    let c = rcgen::CertificateParams::new(vec![SECOND.to_string()])
        .unwrap()
        .signed_by(&k, &issuer)
        .unwrap();
    std::fs::write(&scert, c.pem()).unwrap();
    std::fs::write(&skey, k.serialize_pem()).unwrap();
    let real = tls::load_identity(&scert, &skey, false, SECOND).unwrap();
    let answer = redeem(real).await;
    assert!(answer.contains("dan@first.example"), "{answer}");
}

/// Sockets that never speak TLS hold no place a configured server needs:
/// its login goes through while 200 of them wait on the port.
#[tokio::test]
async fn idle_sockets_do_not_lock_out_configured_servers() {
    let p = pair(|_| {}, |_| {}).await;
    register(&p.first, &["dan"]).await;
    let mut home = p.first.login("dan", &password("dan")).await;
    let ticket = ticket_for(&mut home, Some(SECOND)).await;
    // Anyone who can reach the listener: more sockets than
    // `max_concurrent` (64), all connected before the real server asks.
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(
            tokio::net::TcpStream::connect(fed_addr(&p.first))
                .await
                .expect("connect"),
        );
    }
    let mut c = p.second.client().await;
    let ack = request(&mut c, ticket_auth(&ticket, FIRST)).await;
    assert_eq!(ack.op, "ack", "{ack:?}");
    drop(idle);
}

/// A user of another server whose name only that server's rules allow
/// (a clash's `~` suffix, up to 64 bytes) can be named in an ACL.
#[tokio::test]
async fn a_federated_user_with_a_clash_name_can_be_named_in_an_acl() {
    captured_logs();
    let (d2, fp2) = cert_dir(SECOND);
    let (addr, fp, _dir) = fake_home(
        fp2,
        "{\"op\":\"fed.answer\",\"ex\":{\"account\":\"mallory~a1b2c3@first.example\"}}\n",
    )
    .await;
    let second = TestServer::start_in(d2, |c| {
        federate(c, SECOND, vec![entry(FIRST, Some(addr), fp)]);
    })
    .await;
    register(&second, &["bob"]).await;
    let mut bob = second.login("bob", &password("bob")).await;
    ok(
        &mut bob,
        Packet::request("create").with("name", "open"),
        "meta",
    )
    .await;
    let mut m = second.client().await;
    let ack = request(&mut m, ticket_auth("ANYTICKET", FIRST)).await;
    assert_eq!(ack.op, "ack", "{ack:?}");
    // Open to that user until the ban names it; the ban puts it out at
    // once, and keeps it out.
    assert_eq!(request(&mut m, on("join", "open")).await.op, "meta");
    ok(
        &mut bob,
        acl("open", "mallory~a1b2c3@first.example", &["ban"], &[]),
        "ack",
    )
    .await;
    let left = loop {
        let p = m.recv_timeout(common::WAIT).await.expect("a packet");
        if p.op == "leave" {
            break p;
        }
    };
    assert_eq!(left.ex_str("reason"), Some("banned"), "{left:?}");
    let refused = request(&mut m, on("join", "open")).await;
    assert_eq!(refused.ex_str("code"), Some("acl/denied"), "{refused:?}");
}

/// A federated member is asked about join requests as what it is: not
/// under `*` where the operator keeps `*` to local accounts, but under an
/// entry naming its server.
#[tokio::test]
async fn federated_admitters_are_judged_as_users_of_their_server() {
    let p = pair(|_| {}, |c| c.federation.star_includes_foreign = false).await;
    register(&p.first, &["dan"]).await;
    register(&p.second, &["bob", "eve", "zed"]).await;
    let mut bob = p.second.login("bob", &password("bob")).await;
    let t = ok(
        &mut bob,
        Packet::request("create").with("name", "club"),
        "meta",
    )
    .await;
    let topic = t.topic.unwrap();
    ok(
        &mut bob,
        acl("club", "dan@first.example", &["read"], &[]),
        "ack",
    )
    .await;
    let (mut dan, _) = federated_login(&p, "dan").await;
    ok(&mut dan, on("join", &topic), "meta").await;
    expect_op(&mut bob, "join").await;
    ok(
        &mut bob,
        on("meta", &topic).with("admission", "members"),
        "ack",
    )
    .await;
    expect_op(&mut dan, "meta").await;

    // `*` may admit, but here `*` is local accounts only: dan is not asked.
    ok(&mut bob, acl("club", "*", &["admit"], &[]), "ack").await;
    expect_op(&mut dan, "acl").await;
    let mut eve = p.second.login("eve", &password("eve")).await;
    let pending = request(&mut eve, on("join", &topic)).await;
    assert_eq!(pending.ex.get("pending"), Some(&serde_json::json!(true)));
    let asked = expect_op(&mut bob, "join-request").await;
    assert_eq!(asked.from.as_deref(), Some("eve"));
    ok(
        &mut bob,
        on("admit", &topic).with("user", "eve").with("accept", true),
        "ack",
    )
    .await;
    let joined = expect_op(&mut dan, "join").await;
    assert_eq!(joined.from.as_deref(), Some("eve"));

    // An entry naming dan's server makes him an admitter.
    ok(
        &mut bob,
        acl("club", "@first.example", &["admit"], &[]),
        "ack",
    )
    .await;
    expect_op(&mut dan, "acl").await;
    let mut zed = p.second.login("zed", &password("zed")).await;
    let pending = request(&mut zed, on("join", &topic)).await;
    assert_eq!(pending.ex.get("pending"), Some(&serde_json::json!(true)));
    let asked = expect_op(&mut dan, "join-request").await;
    assert_eq!(asked.from.as_deref(), Some("zed"));
    ok(
        &mut dan,
        on("admit", &topic)
            .with("user", "zed")
            .with("accept", false),
        "ack",
    )
    .await;
}

/// A user of another server who asks to join a topic whose members admit
/// newcomers is admitted by its `user@home`; a ban of its server later
/// puts it out, unless it is an owner.
#[tokio::test]
async fn a_federated_newcomer_is_admitted_and_a_server_ban_spares_owners() {
    let p = pair(|_| {}, |_| {}).await;
    register(&p.first, &["dan", "carol"]).await;
    register(&p.second, &["bob"]).await;
    let mut bob = p.second.login("bob", &password("bob")).await;
    let t = ok(
        &mut bob,
        Packet::request("create")
            .with("name", "club")
            .with("admission", "members"),
        "meta",
    )
    .await;
    let topic = t.topic.unwrap();
    let (mut dan, _) = federated_login(&p, "dan").await;
    let asked = ok(&mut dan, on("join", &topic), "ack").await;
    assert_eq!(asked.ex.get("pending"), Some(&serde_json::json!(true)));
    expect_op(&mut bob, "join-request").await;
    let admit = on("admit", &topic)
        .with("user", "dan@first.example")
        .with("accept", true);
    ok(&mut bob, admit, "ack").await;
    expect_op(&mut dan, "admit").await;
    expect_op(&mut dan, "join").await;
    // carol, an owner from the same server, and dan, a plain member.
    ok(
        &mut bob,
        acl("club", "carol@first.example", &["owner"], &[]),
        "ack",
    )
    .await;
    expect_op(&mut dan, "acl").await;
    let (mut carol, _) = federated_login(&p, "carol").await;
    ok(&mut carol, on("join", &topic), "ack").await;
    expect_op(&mut bob, "join-request").await;
    let admit = on("admit", &topic)
        .with("user", "carol@first.example")
        .with("accept", true);
    ok(&mut bob, admit, "ack").await;
    expect_op(&mut dan, "join").await;
    ok(
        &mut bob,
        acl("club", "@first.example", &["ban"], &[]),
        "ack",
    )
    .await;
    let out = expect_op(&mut dan, "leave").await;
    assert_eq!(out.from.as_deref(), Some("dan@first.example"));
    let meta = ok(&mut carol, on("meta", &topic), "meta").await;
    let members = meta.ex["members"].to_string();
    assert!(
        members.contains("carol@first.example") && !members.contains("dan@"),
        "{members}"
    );
}
