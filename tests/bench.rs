//! The benchmark tool's workloads run end to end against an in-process
//! server (tiny sizes: this checks the tool, it measures nothing).

mod common;

use common::*;
use tenthbit::bench::{self, Load, Target};

async fn bench_server() -> TestServer {
    TestServer::start_with(|c| {
        c.limits.packets_per_second = 1_000_000;
        c.limits.packet_burst = 1_000_000;
        c.limits.max_connections_per_ip = 10_000;
        c.auth.max_failures_per_ip = 1_000_000;
    })
    .await
}

fn target(server: &TestServer) -> Target {
    Target {
        addr: server.addr.to_string(),
        options: server.options(vec![tenthbit::tls::Alpn::Plain]),
        server_pid: Some(std::process::id()),
        spread: Vec::new(),
        spread_pids: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_and_pairs_deliver_everything() {
    let server = bench_server().await;
    let t = target(&server);
    let load = Load {
        messages: 50,
        size: 100,
        rate: None,
        history: false,
        batch_bytes: 0,
    };
    let r = bench::fanout(&t, 5, 2, load).await.unwrap();
    assert_eq!((r.expected, r.deliveries, r.lost), (500, 500, 0), "{r}");
    assert!(r.p99_ms >= r.p50_ms && r.max_ms >= r.p99_ms);
    assert!(r.server_cpu_seconds.is_some() && r.server_rss_kib.is_some());
    let r = bench::fanout(
        &t,
        3,
        1,
        Load {
            rate: Some(2000),
            history: true,
            ..load
        },
    )
    .await
    .unwrap();
    assert_eq!((r.deliveries, r.lost), (150, 0), "{r}");
    let r = bench::pairs(&t, 4, load, false).await.unwrap();
    assert_eq!((r.expected, r.deliveries, r.lost), (200, 200, 0), "{r}");
    assert!(r.to_string().contains("deliveries 200 of 200"));
    // chatbench's pattern: both members send and receive on one
    // connection, in writes of at least 16 KiB.
    let both = Load {
        batch_bytes: 16 * 1024,
        messages: 300,
        ..load
    };
    let r = bench::pairs(&t, 4, both, true).await.unwrap();
    assert_eq!((r.expected, r.deliveries, r.lost), (2400, 2400, 0), "{r}");
    assert!(r.workload.contains("both ways"), "{r}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_sends_are_counted_and_the_fence_is_not_one() {
    // Sends without ids get no ack: what the rate limit refuses is counted
    // from its errors, and the `ping` that follows the messages (refused
    // too, the bucket being empty) ends the sender's reading without
    // counting as a refused send.
    let server = TestServer::start_with(|c| {
        c.limits.packets_per_second = 1;
        c.limits.packet_burst = 60;
        c.limits.max_connections_per_ip = 10_000;
    })
    .await;
    let t = target(&server);
    let load = Load {
        messages: 200,
        size: 20,
        rate: None,
        history: false,
        batch_bytes: 0,
    };
    let r = bench::fanout(&t, 1, 1, load).await.unwrap();
    let refused: u64 = r
        .notes
        .iter()
        .find(|(k, _)| k == "sends refused by the server")
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or(0);
    assert!(r.lost > 0, "{r}");
    assert_eq!(refused, r.lost, "{r}");
    assert_eq!(r.deliveries + refused, 200, "{r}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_reports_every_connection_held() {
    let server = bench_server().await;
    let t = target(&server);
    for distinct in [false, true] {
        let r = bench::idle(&t, 20, 8, distinct).await.unwrap();
        assert!(
            r.notes
                .iter()
                .any(|(k, v)| k == "connections held" && v == "20 of 20"),
            "{r}"
        );
    }
    server.stop().await;
}

/// The login storm measures hashing, not an account's allowance of
/// password checks in flight: here one, with eight logins at a time, and
/// none is throttled (each worker logs in as an account of its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_storm_is_not_throttled() {
    let server = TestServer::start_with(|c| {
        c.limits.max_connections_per_ip = 10_000;
        c.auth.max_failures_per_ip = 1_000_000;
        c.auth.max_failures_per_account = 1;
    })
    .await;
    let r = bench::login(&target(&server), 13, 8).await.unwrap();
    assert!(
        r.notes
            .iter()
            .any(|(k, v)| k == "logins" && v.starts_with("13 of 13")),
        "{r}"
    );
    server.stop().await;
}

/// A minimal NATS-speaking server for the `--nats` workloads: INFO in plain
/// text, then TLS; CONNECT, PING, SUB and PUB (fanned out as MSG).
mod mini_nats {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    type Subs = Arc<Mutex<HashMap<String, Vec<(String, mpsc::UnboundedSender<Vec<u8>>)>>>>;

    pub async fn start(config: Arc<rustls::ServerConfig>) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let subs: Subs = Arc::default();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let (acceptor, subs) = (acceptor.clone(), subs.clone());
                tokio::spawn(async move {
                    tcp.write_all(b"INFO {\"tls_required\":true}\r\n")
                        .await
                        .ok()?;
                    let tls = acceptor.accept(tcp).await.ok()?;
                    let (rd, mut wr) = tokio::io::split(tls);
                    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
                    tokio::spawn(async move {
                        while let Some(bytes) = rx.recv().await {
                            if wr.write_all(&bytes).await.is_err() {
                                break;
                            }
                        }
                    });
                    let mut rd = BufReader::new(rd);
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if rd.read_line(&mut line).await.ok()? == 0 {
                            return Some(());
                        }
                        let words: Vec<String> =
                            line.split_whitespace().map(str::to_owned).collect();
                        match words.first().map(String::as_str) {
                            Some("PING") => tx.send(b"PONG\r\n".to_vec()).ok()?,
                            Some("SUB") => subs
                                .lock()
                                .unwrap()
                                .entry(words[1].clone())
                                .or_default()
                                .push((words[2].clone(), tx.clone())),
                            Some("PUB") => {
                                let n: usize = words[2].parse().ok()?;
                                let mut payload = vec![0u8; n + 2];
                                rd.read_exact(&mut payload).await.ok()?;
                                for (sid, sub) in
                                    subs.lock().unwrap().get(&words[1]).into_iter().flatten()
                                {
                                    let mut msg =
                                        format!("MSG {} {sid} {n}\r\n", words[1]).into_bytes();
                                    msg.extend_from_slice(&payload);
                                    let _ = sub.send(msg);
                                }
                            }
                            _ => {}
                        }
                    }
                });
            }
        });
        addr
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_mode_speaks_the_nats_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tenthbit::config::TlsConfig {
        cert_file: dir.path().join("c.crt"),
        key_file: dir.path().join("c.key"),
        ..Default::default()
    };
    let server_tls = tenthbit::tls::server_config(&cfg, "localhost", false).unwrap();
    let mut plain = (*server_tls.config.preferred()).clone();
    plain.alpn_protocols.clear();
    let addr = mini_nats::start(std::sync::Arc::new(plain)).await;
    let t = Target {
        addr: addr.to_string(),
        options: tenthbit::client::Options::pinned(server_tls.fingerprint),
        server_pid: None,
        spread: Vec::new(),
        spread_pids: Vec::new(),
    };
    let load = Load {
        messages: 40,
        size: 100,
        rate: None,
        history: false,
        batch_bytes: 0,
    };
    let r = bench::nats::fanout(&t, 4, 1, load).await.unwrap();
    assert_eq!((r.expected, r.deliveries, r.lost), (160, 160, 0), "{r}");
    assert!(r.max_ms > 0.0);
    let r = bench::nats::pairs(&t, 3, load).await.unwrap();
    assert_eq!((r.expected, r.deliveries, r.lost), (120, 120, 0), "{r}");
}
