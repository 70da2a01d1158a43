//! Shared test harness: in-process servers on 127.0.0.1:0 with a fresh
//! certificate and data directory each, and helpers that wait for packets
//! with a timeout (never a sleep).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use tenthbit::client::{Client, Options};
use tenthbit::proto::Packet;
use tenthbit::tls::Alpn;
use tenthbit::{Config, ServerHandle};
use tokio::net::TcpListener;

/// How long any single expected packet may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A server running in this process.
pub struct TestServer {
    pub handle: ServerHandle,
    pub addr: SocketAddr,
    pub fingerprint: [u8; 32],
    pub dir: tempfile::TempDir,
}

impl TestServer {
    /// A server with the default configuration.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A server whose configuration `tweak` adjusts.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::launch(dir, tweak).await
    }

    /// A server whose state and certificate live in `dir` (which may hold
    /// a certificate made beforehand, at `certs/server.crt` and `.key`).
    pub async fn start_in(dir: tempfile::TempDir, tweak: impl FnOnce(&mut Config)) -> Self {
        Self::launch(dir, tweak).await
    }

    /// Restarts on the same data directory and certificate (a new port).
    pub async fn restart(self, tweak: impl FnOnce(&mut Config)) -> Self {
        let TestServer { handle, dir, .. } = self;
        handle.shutdown().await;
        Self::launch(dir, tweak).await
    }

    /// Restarts on the same data directory, certificate and port (for
    /// clients that reconnect to the address they know, like the web page).
    pub async fn restart_same_port(self, tweak: impl FnOnce(&mut Config)) -> Self {
        let TestServer {
            handle, dir, addr, ..
        } = self;
        handle.shutdown().await;
        Self::launch_on(dir, None, tweak, addr).await
    }

    /// Starts a mesh node whose state and certificates live in `dir`, its
    /// mesh on `mesh_listener`.
    pub async fn launch_mesh(
        dir: tempfile::TempDir,
        mesh_listener: TcpListener,
        tweak: impl FnOnce(&mut Config),
    ) -> Self {
        Self::launch_on(
            dir,
            Some(mesh_listener),
            tweak,
            SocketAddr::from(([127, 0, 0, 1], 0)),
        )
        .await
    }

    /// Starts a server whose state and certificate live in `dir`.
    async fn launch(dir: tempfile::TempDir, tweak: impl FnOnce(&mut Config)) -> Self {
        Self::launch_on(dir, None, tweak, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts a server on `addr`, its mesh (if any) on `mesh_listener`.
    async fn launch_on(
        dir: tempfile::TempDir,
        mesh_listener: Option<TcpListener>,
        tweak: impl FnOnce(&mut Config),
        addr: SocketAddr,
    ) -> Self {
        let mut config = Config::default();
        config.server.data_dir = dir.path().join("data");
        config.tls.cert_file = dir.path().join("certs/server.crt");
        config.tls.key_file = dir.path().join("certs/server.key");
        // Cheap hashes keep the suite fast; production defaults stay strong.
        config.auth.argon2_memory_kib = 64;
        config.auth.argon2_iterations = 1;
        tweak(&mut config);
        config.validate().expect("test config is valid");
        let listener = TcpListener::bind(addr).await.expect("bind");
        let handle = tenthbit::start_with_mesh(config, vec![listener], mesh_listener)
            .await
            .expect("server starts");
        TestServer {
            addr: handle.local_addr(),
            fingerprint: handle.fingerprint(),
            handle,
            dir,
        }
    }

    /// Registers `name` with `password` (must succeed).
    pub async fn register(&self, name: &str, password: &str) {
        let mut c = self.client().await;
        let p = request(
            &mut c,
            Packet::request("register")
                .with("username", name)
                .with("password", password),
        )
        .await;
        assert_eq!(p.op, "ack", "register {name}: {p:?}");
    }

    /// A client logged in as `name`, with the login sequence consumed.
    pub async fn login(&self, name: &str, password: &str) -> Client {
        let mut c = self.client().await;
        let ack = request(&mut c, password_auth(name, password)).await;
        assert_eq!(ack.op, "ack", "login {name}: {ack:?}");
        expect_op(&mut c, "meta").await;
        expect_op(&mut c, "meta").await;
        c
    }

    /// `name` registered (password `hellosecret`) and logged in, with a
    /// topic it created named `topic`: the client and the topic's id.
    pub async fn with_topic(&self, name: &str, topic: &str) -> (Client, String) {
        self.register(name, "hellosecret").await;
        let mut c = self.login(name, "hellosecret").await;
        let created = request(&mut c, Packet::request("create").with("name", topic)).await;
        let id = created.topic.clone();
        (
            c,
            id.unwrap_or_else(|| panic!("create {topic}: {created:?}")),
        )
    }

    /// Options trusting this server, offering `alpn`.
    pub fn options(&self, alpn: Vec<Alpn>) -> Options {
        Options::pinned(self.fingerprint).with_alpn(alpn)
    }

    /// A connected client offering plain `10bit/0.1`, welcome not yet read.
    pub async fn connect(&self) -> Client {
        self.connect_alpn(vec![Alpn::Plain]).await
    }

    /// A connected client offering `alpn`, welcome not yet read.
    pub async fn connect_alpn(&self, alpn: Vec<Alpn>) -> Client {
        Client::connect(&self.addr.to_string(), &self.options(alpn))
            .await
            .expect("client connects")
    }

    /// A connected client whose `welcome` has been read.
    pub async fn client(&self) -> Client {
        let mut c = self.connect().await;
        expect_op(&mut c, "welcome").await;
        c
    }

    /// Shuts the server down and waits for it.
    pub async fn stop(self) {
        self.handle.shutdown().await;
    }
}

/// The next packet, which must have `op`.
pub async fn expect_op(c: &mut Client, op: &str) -> Packet {
    let p = c
        .recv_timeout(WAIT)
        .await
        .unwrap_or_else(|e| panic!("waiting for {op}: {e}"));
    assert_eq!(p.op, op, "expected {op}, got {p:?}");
    p
}

/// The next packet, which must be an `error` with `code`.
pub async fn expect_error(c: &mut Client, code: &str) -> Packet {
    let p = expect_op(c, "error").await;
    assert_eq!(p.ex_str("code"), Some(code), "{p:?}");
    assert!(p.ex_str("message").is_some_and(|m| !m.is_empty()), "{p:?}");
    p
}

/// The next packet, which must be a `bye` with `code`.
pub async fn expect_bye(c: &mut Client, code: &str) -> Packet {
    let p = expect_op(c, "bye").await;
    assert_eq!(p.ex_str("code"), Some(code), "{p:?}");
    p
}

/// The server ends the connection cleanly (TLS close_notify) next.
pub async fn expect_clean_close(c: &mut Client) {
    match tokio::time::timeout(WAIT, c.recv()).await {
        Ok(Ok(None)) => {}
        other => panic!("expected a clean close, got {other:?}"),
    }
}

/// Sends a request with an id and returns the reply whose `ex.for` names it.
pub async fn request(c: &mut Client, p: Packet) -> Packet {
    c.request(p, WAIT).await.expect("reply")
}

/// `ping` round trip: proves the connection is alive and in sync.
pub async fn assert_alive(c: &mut Client) {
    let id = format!("alive-{}", tenthbit::proto::id::new_id());
    let reply = request(c, Packet::request("ping").with_id(id.clone())).await;
    assert_eq!(reply.op, "pong");
    assert_eq!(reply.ex_str("for"), Some(id.as_str()));
}

/// argon2 made costly enough that hashes, one at a time, take a while (so
/// logins pile up in flight), and cheap enough for CI.
pub fn slow_hashes(config: &mut Config) {
    config.auth.argon2_memory_kib = 8 * 1024;
    config.auth.argon2_iterations = 2;
    config.auth.max_concurrent_hashes = 1;
}

/// `n` ping round trips, one after another; returns the slowest (for a
/// test to print, never to assert: timings are the benchmark's job).
pub async fn ping_round_trips(c: &mut Client, n: usize) -> Duration {
    let mut worst = Duration::ZERO;
    for i in 0..n {
        let start = std::time::Instant::now();
        let p = request(c, Packet::request("ping").with_id(format!("p{i}"))).await;
        assert_eq!(p.op, "pong");
        worst = worst.max(start.elapsed());
    }
    worst
}

/// A password `auth` request.
pub fn password_auth(name: &str, password: &str) -> Packet {
    Packet::request("auth")
        .with("method", "password")
        .with("username", name)
        .with("password", password)
}

/// The next line (raw text) whose op is `op`, skipping others.
pub async fn line_with_op(c: &mut Client, op: &str) -> String {
    let wanted = format!("\"op\":\"{op}\"");
    loop {
        let line = tokio::time::timeout(WAIT, c.recv_line())
            .await
            .unwrap_or_else(|_| panic!("waiting for {op}"))
            .expect("read")
            .unwrap_or_else(|| panic!("closed waiting for {op}"));
        let text = String::from_utf8(line.to_vec()).expect("UTF-8");
        if text.contains(&wanted) {
            return text;
        }
    }
}

/// Every text of the events and registers of the store in `data_dir`
/// (read-only, so it may be read beside a running server: WAL lets a
/// reader in), for searching.
pub fn store_text(data_dir: &std::path::Path) -> String {
    let conn = rusqlite::Connection::open_with_flags(
        data_dir.join("tenthbit.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the store");
    let mut out = String::new();
    for sql in [
        "SELECT body FROM events",
        "SELECT entity || ' ' || field || ' ' || value FROM registers",
    ] {
        let mut stmt = conn.prepare(sql).expect("query");
        for row in stmt.query_map([], |r| r.get::<_, String>(0)).expect("rows") {
            out.push_str(&row.expect("row"));
            out.push('\n');
        }
    }
    out
}

/// `GET path` over plain HTTP (the operator's listener): status and body.
pub async fn plain_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut raw))
        .await
        .expect("answer in time")
        .expect("read");
    let text = String::from_utf8(raw).expect("utf-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, body.to_owned())
}

/// The value of the metrics sample named exactly `series` (name and
/// labels) in a scrape; 0 when absent.
pub fn sample(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// A request `op` about `topic` (a UUID or a name).
pub fn on(op: &str, topic: &str) -> Packet {
    let mut p = Packet::request(op);
    p.topic = Some(topic.to_owned());
    p
}
