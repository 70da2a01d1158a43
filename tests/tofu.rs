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
    assert_eq!(known.lookup(&addr_a).unwrap(), Some(a.fingerprint));

    let (mut c, trusted) = known.connect(&addr_a, &opts).await.unwrap();
    assert_eq!(trusted, Trusted::Known(a.fingerprint));
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

/// An entry for the server with a note after the fingerprint, in a file
/// with a line that is not UTF-8, still pins; an entry that does not parse
/// (cut short) is an error. None of them is "never seen this server":
/// trust on first use must not take whatever certificate is presented now,
/// and again at every later connection.
#[tokio::test]
async fn a_damaged_known_servers_file_does_not_turn_pinning_off() {
    let a = TestServer::start().await;
    let b = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let addr = b.addr.to_string();
    let opts = b.options(vec![Alpn::Plain]);
    let a_fp = tenthbit::tls::pin::format_fingerprint(&a.fingerprint);

    // b's address pinned to a's certificate, with a note after it.
    let path = dir.path().join("noted");
    std::fs::write(&path, format!("{addr} {a_fp}  # ops ticket 42\n")).unwrap();
    let known = KnownServers::at(path.clone());
    for _ in 0..2 {
        if let Ok((_, trusted)) = known.connect(&addr, &opts).await {
            panic!("a certificate other than the pinned one was trusted: {trusted:?}");
        }
    }
    // Nothing was added for a later connection to find first.
    assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);

    // b's address pinned to a's certificate, and one byte of another line
    // is not UTF-8.
    let path = dir.path().join("latin1");
    let mut text = format!("{addr} {a_fp}\n").into_bytes();
    text.extend_from_slice(b"caf\xe9.example:10817 00\n");
    std::fs::write(&path, text).unwrap();
    let known = KnownServers::at(path);
    if let Ok((_, trusted)) = known.connect(&addr, &opts).await {
        panic!("a certificate other than the pinned one was trusted: {trusted:?}");
    }

    // b's address with its fingerprint cut short.
    let path = dir.path().join("cut");
    std::fs::write(&path, format!("{addr} {}\n", &a_fp[..20])).unwrap();
    let known = KnownServers::at(path.clone());
    for _ in 0..2 {
        match known.connect(&addr, &opts).await {
            Ok((_, trusted)) => panic!("trusted with a damaged entry: {trusted:?}"),
            Err(e) => assert!(e.to_string().contains("does not parse"), "{e}"),
        }
    }
    assert!(known.lookup(&addr).is_err());
    assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
    a.stop().await;
    b.stop().await;
}
