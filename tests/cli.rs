//! The `tenthbit` client as scripts use it: `send` with its exit codes, the
//! password from the environment or a file, never from argv.

mod common;

use std::process::{Command, Output};

use common::*;
use tenthbit::proto::Packet;

fn send(
    server_addr: &str,
    known: &std::path::Path,
    args: &[&str],
    password: Option<&str>,
) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenthbit"));
    cmd.arg("send")
        .arg(server_addr)
        .args(args)
        .env("TENTHBIT_KNOWN_SERVERS", known);
    match password {
        Some(p) => cmd.env("TENTHBIT_PASSWORD", p),
        None => cmd.env_remove("TENTHBIT_PASSWORD"),
    };
    cmd.output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_delivers_and_reports_failures_by_exit_code() {
    let server = TestServer::start().await;
    server.register("dan", "hellosecret").await;
    server.register("bob", "hellosecret").await;
    let mut bob = server.login("bob", "hellosecret").await;
    let topic = request(&mut bob, Packet::request("create").with("name", "lobby")).await;
    assert_eq!(topic.op, "meta");
    let dir = tempfile::tempdir().unwrap();
    let known = dir.path().join("known_servers");
    let addr = server.addr.to_string();

    let (a, k) = (addr.clone(), known.clone());
    let out = tokio::task::spawn_blocking(move || {
        send(
            &a,
            &k,
            &["lobby", "hello from a script", "-u", "dan"],
            Some("hellosecret"),
        )
    })
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    // bob sees dan join, then the message with the id the script printed.
    expect_op(&mut bob, "join").await;
    let m = expect_op(&mut bob, "send").await;
    assert_eq!(m.ex_str("body"), Some("hello from a script"));
    assert_eq!(m.id.as_deref(), Some(id.as_str()));

    // The password from a file works too; a wrong one is exit 3.
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "wrong-password\n").unwrap();
    let (a, k, p) = (addr.clone(), known.clone(), pw.to_str().unwrap().to_owned());
    let out = tokio::task::spawn_blocking(move || {
        send(
            &a,
            &k,
            &["lobby", "x", "-u", "dan", "--password-file", &p],
            None,
        )
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("auth/failed"));

    // An unknown topic is refused by the server: exit 4 with its code.
    let (a, k) = (addr.clone(), known.clone());
    let out = tokio::task::spawn_blocking(move || {
        send(&a, &k, &["nowhere", "x", "-u", "dan"], Some("hellosecret"))
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("topic/not-found"));

    // No password at all: a usage error, nothing sent.
    let (a, k) = (addr.clone(), known.clone());
    let out = tokio::task::spawn_blocking(move || send(&a, &k, &["lobby", "x", "-u", "dan"], None))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("TENTHBIT_PASSWORD"));
    server.stop().await;

    // Nobody listening: exit 2.
    let out = tokio::task::spawn_blocking(move || {
        send(&addr, &known, &["lobby", "x", "-u", "dan"], Some("pw"))
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
