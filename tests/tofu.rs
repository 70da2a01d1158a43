//! Trust on first use: the client remembers a server's certificate at first
//! contact, accepts it later, and refuses loudly when it changes.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;
use tenthbit::client::Error;
use tenthbit::client::known::{KnownServers, Trusted};
use tenthbit::tls::Alpn;

#[tokio::test]
async fn first_use_then_known_then_changed() {
    let a = TestServer::start().await;
    let b = TestServer::start().await;
    assert_ne!(a.fingerprint, b.fingerprint);
    let dir = tempfile::tempdir().unwrap();
    let known = KnownServers::at(dir.path().join("tenthbit/known_servers"));
    let addr_a = a.addr.to_string();
    let opts = a.options(vec![Alpn::Plain]);

    let (mut c, trusted) = known.connect(&addr_a, &opts).await.unwrap();
    assert_eq!(trusted, Trusted::FirstUse(a.fingerprint));
    expect_op(&mut c, "welcome").await;
    assert_eq!(known.lookup(&addr_a), Some(a.fingerprint));

    let (mut c, trusted) = known.connect(&addr_a, &opts).await.unwrap();
    assert_eq!(trusted, Trusted::Known);
    expect_op(&mut c, "welcome").await;

    // Server b now answers at an address remembered with a's certificate.
    let addr_b = b.addr.to_string();
    known.remember(&addr_b, &a.fingerprint).unwrap();
    match known.connect(&addr_b, &opts).await {
        Err(Error::CertificateChanged {
            target,
            known: k,
            presented,
            file,
        }) => {
            assert_eq!(target, addr_b);
            assert_eq!(k, tenthbit::tls::pin::format_fingerprint(&a.fingerprint));
            assert_eq!(
                presented,
                tenthbit::tls::pin::format_fingerprint(&b.fingerprint)
            );
            assert_eq!(file, known.path());
        }
        other => panic!("expected a refusal, got {:?}", other.map(|(_, t)| t)),
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn the_client_binary_trusts_on_first_use() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("known_servers");
    let addr = server.addr.to_string();
    let run = move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tenthbit"))
            .args(["connect", &addr])
            .env("TENTHBIT_KNOWN_SERVERS", &file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"{\"id\":\"q\",\"op\":\"quit\"}\n")
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let first = tokio::task::spawn_blocking(run.clone()).await.unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let err = String::from_utf8_lossy(&first.stderr);
    assert!(err.contains("first connection"), "{err}");
    let out = String::from_utf8_lossy(&first.stdout);
    assert!(
        out.contains("\"op\":\"welcome\"") && out.contains("\"for\":\"q\""),
        "{out}"
    );
    let second = tokio::task::spawn_blocking(run).await.unwrap();
    assert!(second.status.success());
    assert!(!String::from_utf8_lossy(&second.stderr).contains("first connection"));
    server.stop().await;
}
