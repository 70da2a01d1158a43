//! Accounts and password login: registration policy and rules, the seed's
//! login sequence, failures, own metadata, several devices, restarts, and the
//! admin CLI working on the store of a running server.

mod common;

use std::process::Command;

use common::*;
use serde_json::json;
use tenthbit::config::Registration;
use tenthbit::proto::Packet;

#[tokio::test]
async fn register_then_login_follows_the_seed_sequence() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let p = request(
        &mut c,
        Packet::request("register")
            .with("username", "Danopia")
            .with("password", "hellosecret"),
    )
    .await;
    assert_eq!(p.op, "ack");
    assert_eq!(p.ex_str("account"), Some("Danopia"));

    c.send(&password_auth("danopia", "hellosecret").with_id("login"))
        .await
        .unwrap();
    let ack = expect_op(&mut c, "ack").await;
    assert_eq!(ack.ex_str("for"), Some("login"));
    let server_meta = expect_op(&mut c, "meta").await;
    assert_eq!(server_meta.from.as_deref(), Some("@localhost"));
    assert!(server_meta.ex_str("rules").is_some());
    let own = expect_op(&mut c, "meta").await;
    assert_eq!(own.from.as_deref(), Some("Danopia"));
    assert!(own.topic.is_none());
    // Logged in: a second auth is refused, session ops pass the login gate.
    let again = request(&mut c, password_auth("danopia", "hellosecret")).await;
    assert_eq!(again.ex_str("code"), Some("auth/already"));
    assert_alive(&mut c).await;
    server.stop().await;
}

#[tokio::test]
async fn login_failures_look_alike() {
    let server = TestServer::start().await;
    server.register("alice", "correct horse").await;
    let mut c = server.client().await;
    for (user, pass) in [
        ("alice", "wrong password"),
        ("nobody", "correct horse"),
        ("ALICE", "Correct horse"),
    ] {
        let p = request(&mut c, password_auth(user, pass)).await;
        assert_eq!(p.ex_str("code"), Some("auth/failed"), "{user}");
        assert_eq!(p.ex_str("message"), Some("login failed"));
    }
    // The name is case-insensitive; the password is not.
    let p = request(&mut c, password_auth("ALICE", "correct horse")).await;
    assert_eq!(p.op, "ack");
    server.stop().await;
}

#[tokio::test]
async fn registration_rules() {
    let server = TestServer::start().await;
    server.register("bob", "password1").await;
    let mut c = server.client().await;
    let cases = [
        ("BOB", "password1", "account/name-taken"),
        ("1bob", "password1", "account/invalid-name"),
        ("bob@10b.it", "password1", "account/invalid-name"),
        ("carol", "short", "account/invalid-password"),
    ];
    for (name, pass, code) in cases {
        let p = request(
            &mut c,
            Packet::request("register")
                .with("username", name)
                .with("password", pass),
        )
        .await;
        assert_eq!(p.ex_str("code"), Some(code), "{name}");
    }
    let p = request(
        &mut c,
        Packet::request("register").with("username", "carol"),
    )
    .await;
    assert_eq!(p.ex_str("code"), Some("request/invalid"));
    server.stop().await;

    let closed = TestServer::start_with(|c| c.auth.registration = Registration::Closed).await;
    let mut c = closed.client().await;
    let p = request(
        &mut c,
        Packet::request("register")
            .with("username", "dave")
            .with("password", "password1"),
    )
    .await;
    assert_eq!(p.ex_str("code"), Some("auth/registration-closed"));
    closed.stop().await;
}

/// Runs the `tenthbitd` admin CLI on the store in `data`, with `password`
/// for the commands that read one.
fn admin_cli(data: &std::path::Path, password: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tenthbitd"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env("TENTHBIT_PASSWORD", password)
        .output()
        .unwrap()
}

/// Pointed at a directory with no store (a `--data-dir` typo, a missing
/// `--config`), the admin commands say so and create nothing, where they
/// used to answer from a new empty store the daemon never reads; `account
/// add`, which may come before the daemon's first start, creates the store
/// and says it did.
#[test]
fn admin_commands_refuse_a_directory_without_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("typo");
    for args in [
        &["account", "list"][..],
        &["account", "del", "alice"],
        &["account", "passwd", "alice"],
        &["admin", "show"],
        &["admin", "grant", "alice"],
    ] {
        let out = admin_cli(&data, "rootpassword", args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {err}");
        assert!(err.contains("no store at"), "{args:?}: {err}");
        assert!(!data.join("tenthbit.db").exists(), "{args:?}");
    }
    let out = admin_cli(&data, "rootpassword", &["account", "add", "root"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("created a new one"), "{err}");
    let out = admin_cli(&data, "rootpassword", &["account", "add", "second"]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("created"));
    let listing = admin_cli(&data, "rootpassword", &["account", "list"]);
    assert!(String::from_utf8_lossy(&listing.stdout).contains("root\t"));
}

#[tokio::test]
async fn only_admins_register_when_policy_says_so() {
    let server = TestServer::start_with(|c| c.auth.registration = Registration::Admins).await;
    let data = server.dir.path().join("data");
    // The admin CLI works on the store of the running server.
    let cli = |args: &[&str]| admin_cli(&data, "rootpassword", args);
    for args in [
        &["account", "add", "root"][..],
        &["account", "add", "plain"],
        &["admin", "grant", "root"],
    ] {
        let out = cli(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let listing = String::from_utf8(cli(&["account", "list"]).stdout).unwrap();
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("root\t") && l.ends_with("admin")),
        "{listing}"
    );
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("plain\t") && !l.contains("admin")),
        "{listing}"
    );

    let register = |name: &str| {
        Packet::request("register")
            .with("username", name)
            .with("password", "password1")
    };
    let mut anon = server.client().await;
    let p = request(&mut anon, register("eve")).await;
    assert_eq!(p.ex_str("code"), Some("auth/registration-closed"));
    let mut plain = server.login("plain", "rootpassword").await;
    let p = request(&mut plain, register("eve")).await;
    assert_eq!(p.ex_str("code"), Some("auth/registration-closed"));
    let mut root = server.login("root", "rootpassword").await;
    let p = request(&mut root, register("eve")).await;
    assert_eq!(p.op, "ack", "{p:?}");
    server.login("eve", "password1").await;

    // passwd and del from the CLI take effect on the next login.
    let out = admin_cli(&data, "newpassword", &["account", "passwd", "plain"]);
    assert!(out.status.success());
    server.login("plain", "newpassword").await;
    assert!(cli(&["account", "del", "eve"]).status.success());
    let mut c = server.client().await;
    let p = request(&mut c, password_auth("eve", "password1")).await;
    assert_eq!(p.ex_str("code"), Some("auth/failed"));
    // A deleted name stays reserved.
    let p = request(&mut root, register("Eve")).await;
    assert_eq!(p.ex_str("code"), Some("account/name-taken"));
    server.stop().await;
}

#[tokio::test]
async fn own_metadata_is_read_updated_and_survives_restart() {
    let server = TestServer::start().await;
    server.register("dan", "hellosecret").await;
    let mut c = server.login("dan", "hellosecret").await;
    let favs = json!([{"topic": "lobby", "autojoin": true}]);
    let p = request(
        &mut c,
        Packet::request("meta")
            .with("fullname", "Dan Opia")
            .with("favorites", favs.clone()),
    )
    .await;
    assert_eq!(p.op, "ack", "{p:?}");
    let p = request(&mut c, Packet::request("meta")).await;
    assert_eq!(p.op, "meta");
    assert_eq!(p.from.as_deref(), Some("dan"));
    assert_eq!(p.ex_str("fullname"), Some("Dan Opia"));
    assert_eq!(p.ex.get("favorites"), Some(&favs));
    // null removes a key.
    let p = request(
        &mut c,
        Packet::request("meta").with("fullname", serde_json::Value::Null),
    )
    .await;
    assert_eq!(p.op, "ack");
    // Bad keys, values and favourites.
    for bad in [
        Packet::request("meta").with("Full Name", "x"),
        Packet::request("meta").with("for", "x"),
        Packet::request("meta").with("big", "x".repeat(5000)),
        Packet::request("meta").with("favorites", json!({"topic": "x"})),
        Packet::request("meta").with("favorites", json!([{"topic": 5}])),
    ] {
        let p = request(&mut c, bad).await;
        assert_eq!(p.ex_str("code"), Some("meta/invalid"), "{p:?}");
    }

    let server = server.restart(|_| {}).await;
    let mut c = server.client().await;
    request(&mut c, password_auth("dan", "hellosecret")).await;
    expect_op(&mut c, "meta").await;
    let own = expect_op(&mut c, "meta").await;
    assert_eq!(own.ex.get("favorites"), Some(&favs));
    assert!(own.ex.get("fullname").is_none());
    server.stop().await;
}

#[tokio::test]
async fn metadata_key_limit() {
    let server = TestServer::start_with(|c| c.limits.max_meta_keys = 2).await;
    server.register("dan", "hellosecret").await;
    let mut c = server.login("dan", "hellosecret").await;
    let p = request(&mut c, Packet::request("meta").with("a", 1).with("b", 2)).await;
    assert_eq!(p.op, "ack");
    let p = request(&mut c, Packet::request("meta").with("c", 3)).await;
    assert_eq!(p.ex_str("code"), Some("meta/invalid"));
    // Replacing one key with another fits.
    let p = request(
        &mut c,
        Packet::request("meta")
            .with("a", serde_json::Value::Null)
            .with("c", 3),
    )
    .await;
    assert_eq!(p.op, "ack");
    server.stop().await;
}

#[tokio::test]
async fn several_devices_log_in_independently() {
    let server = TestServer::start().await;
    server.register("dan", "hellosecret").await;
    let mut phone = server.login("dan", "hellosecret").await;
    let mut laptop = server.login("dan", "hellosecret").await;
    let p = request(&mut phone, Packet::request("meta").with("fullname", "Dan")).await;
    assert_eq!(p.op, "ack");
    let p = request(&mut laptop, Packet::request("meta")).await;
    assert_eq!(p.ex_str("fullname"), Some("Dan"));
    // One device leaving does not log the other out.
    let p = request(&mut phone, Packet::request("quit")).await;
    assert_eq!(p.op, "ack");
    expect_clean_close(&mut phone).await;
    let p = request(&mut laptop, Packet::request("meta")).await;
    assert_eq!(p.op, "meta");
    server.stop().await;
}

/// The admin CLI beside a running daemon: `account del` ends the deleted
/// account's live sessions (the daemon notices the store changed at its
/// next tidy tick), and `account passwd` ends the account's unredeemed
/// login tickets.
#[tokio::test]
async fn the_cli_ends_what_it_takes_away_in_a_running_daemon() {
    let server = TestServer::start().await;
    let data = server.dir.path().join("data");
    let cli = |args: &[&str]| admin_cli(&data, "newpassword", args);
    server.register("dan", "hellosecret").await;
    server.register("eve", "hellosecret").await;
    let mut dan = server.login("dan", "hellosecret").await;
    let mut eve = server.login("eve", "hellosecret").await;
    let p = request(&mut eve, Packet::request("ticket")).await;
    let ticket = p.ex_str("ticket").expect("ticket").to_owned();
    assert!(cli(&["account", "passwd", "eve"]).status.success());
    let mut c = server.client().await;
    let p = request(
        &mut c,
        Packet::request("auth")
            .with("method", "ticket")
            .with("ticket", ticket.as_str())
            .with("server", "localhost"),
    )
    .await;
    assert_eq!(p.ex_str("code"), Some("ticket/invalid"), "{p:?}");
    assert!(cli(&["account", "del", "dan"]).status.success());
    expect_bye(&mut dan, "account/deleted").await;
    assert_alive(&mut eve).await;
    server.stop().await;
}
