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
    let r = bench::pairs(&t, 4, load).await.unwrap();
    assert_eq!((r.expected, r.deliveries, r.lost), (200, 200, 0), "{r}");
    assert!(r.to_string().contains("deliveries 200 of 200"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_login_report() {
    let server = bench_server().await;
    let t = target(&server);
    let r = bench::idle(&t, 20, 8).await.unwrap();
    assert!(
        r.notes
            .iter()
            .any(|(k, v)| k == "connections held" && v == "20 of 20"),
        "{r}"
    );
    let r = bench::login(&t, 5, 2).await.unwrap();
    assert!(
        r.notes
            .iter()
            .any(|(k, v)| k == "logins" && v.starts_with("5 of 5")),
        "{r}"
    );
    server.stop().await;
}
