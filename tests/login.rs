//! Ticket and public-key login, throttling, and deleting an account with
//! its export: every flow and every failure.

mod common;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::*;
use ed25519_dalek::{Signer, SigningKey};
use tenthbit::client::Client;
use tenthbit::proto::Packet;
use tenthbit::session::signed_message;

fn ticket_auth(ticket: &str, server: &str) -> Packet {
    Packet::request("auth")
        .with("method", "ticket")
        .with("ticket", ticket)
        .with("server", server)
}

async fn get_ticket(c: &mut Client, bound: Option<&str>) -> String {
    let mut req = Packet::request("ticket");
    if let Some(b) = bound {
        req = req.with("server", b);
    }
    let p = request(c, req).await;
    assert_eq!(p.op, "ticket", "{p:?}");
    assert!(p.ex.get("expires").and_then(|v| v.as_i64()).is_some());
    let t = p.ex_str("ticket").unwrap().to_owned();
    assert!(
        t.len() >= 28 && t.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{t}"
    );
    t
}

async fn whoami(c: &mut Client) -> Option<String> {
    let p = request(c, Packet::request("whoami")).await;
    assert_eq!(p.op, "ack");
    p.ex_str("account").map(str::to_owned)
}

#[tokio::test]
async fn ticket_logs_in_once() {
    let server = TestServer::start().await;
    server.register("dan", "hellosecret").await;
    let mut home = server.login("dan", "hellosecret").await;
    let ticket = get_ticket(&mut home, None).await;

    let mut other = server.client().await;
    assert_eq!(whoami(&mut other).await, None);
    let p = request(&mut other, ticket_auth(&ticket, "localhost")).await;
    assert_eq!(p.op, "ack", "{p:?}");
    expect_op(&mut other, "meta").await;
    expect_op(&mut other, "meta").await;
    assert_eq!(whoami(&mut other).await.as_deref(), Some("dan"));

    // Reused: refused.
    let mut third = server.client().await;
    let p = request(&mut third, ticket_auth(&ticket, "localhost")).await;
    assert_eq!(p.ex_str("code"), Some("ticket/invalid"));
    // Tickets need a login to be issued.
    let p = request(&mut third, Packet::request("ticket")).await;
    assert_eq!(p.ex_str("code"), Some("auth/required"));
    server.stop().await;
}

#[tokio::test]
async fn ticket_failures() {
    let server = TestServer::start().await;
    server.register("dan", "hellosecret").await;
    let mut home = server.login("dan", "hellosecret").await;
    let mut c = server.client().await;

    // Bound to another server: refused here, and consumed by the attempt.
    let elsewhere = get_ticket(&mut home, Some("chat.example")).await;
    let p = request(&mut c, ticket_auth(&elsewhere, "localhost")).await;
    assert_eq!(p.ex_str("code"), Some("ticket/invalid"));
    // Presented as a ticket of a server this one does not federate with:
    // never redeemed, here or there.
    let t = get_ticket(&mut home, None).await;
    let p = request(&mut c, ticket_auth(&t, "10b.it")).await;
    assert_eq!(p.ex_str("code"), Some("ticket/unknown-server"));
    // Bound to this server: fine.
    let here = get_ticket(&mut home, Some("localhost")).await;
    let p = request(&mut c, ticket_auth(&here, "localhost")).await;
    assert_eq!(p.op, "ack", "{p:?}");
    // Made up.
    let mut d = server.client().await;
    let p = request(&mut d, ticket_auth("OHMY", "localhost")).await;
    assert_eq!(p.ex_str("code"), Some("ticket/invalid"));
    server.stop().await;
}

#[tokio::test]
async fn expired_ticket_is_refused() {
    let server = TestServer::start_with(|c| c.auth.ticket_ttl_ms = 1).await;
    server.register("dan", "hellosecret").await;
    let mut home = server.login("dan", "hellosecret").await;
    let ticket = get_ticket(&mut home, None).await;
    // Waiting out the 1 ms lifetime is the behaviour under test.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut c = server.client().await;
    let p = request(&mut c, ticket_auth(&ticket, "localhost")).await;
    assert_eq!(p.ex_str("code"), Some("ticket/invalid"));
    server.stop().await;
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn public(k: &SigningKey) -> String {
    B64.encode(k.verifying_key().as_bytes())
}

async fn challenge(c: &mut Client, user: &str) -> String {
    let p = request(
        c,
        Packet::request("auth")
            .with("method", "pubkey")
            .with("username", user),
    )
    .await;
    assert_eq!(p.op, "challenge", "{p:?}");
    assert_eq!(p.ex_str("server"), Some("localhost"));
    p.ex_str("challenge").unwrap().to_owned()
}

fn signature_auth(user: &str, sig: &str) -> Packet {
    Packet::request("auth")
        .with("method", "pubkey")
        .with("username", user)
        .with("signature", sig)
}

#[tokio::test]
async fn public_key_login_and_its_failures() {
    let server = TestServer::start().await;
    server.register("dan", "hellosecret").await;
    let mut home = server.login("dan", "hellosecret").await;
    let k = key(7);
    let p = request(
        &mut home,
        Packet::request("key-add").with("key", public(&k)),
    )
    .await;
    assert_eq!(p.op, "ack", "{p:?}");
    let p = request(&mut home, Packet::request("key-list")).await;
    assert_eq!(p.op, "keys");
    assert_eq!(p.ex.get("keys"), Some(&serde_json::json!([public(&k)])));
    for bad in ["not base64!", "AAAA", &B64.encode([1u8; 31])] {
        let p = request(&mut home, Packet::request("key-add").with("key", bad)).await;
        assert_eq!(p.ex_str("code"), Some("key/invalid"), "{bad}");
    }

    // Success: sign the documented message.
    let mut c = server.client().await;
    let ch = challenge(&mut c, "Dan").await;
    let sig = B64.encode(
        k.sign(signed_message("localhost", "Dan", &ch).as_bytes())
            .to_bytes(),
    );
    let p = request(&mut c, signature_auth("Dan", &sig)).await;
    assert_eq!(p.op, "ack", "{p:?}");
    expect_op(&mut c, "meta").await;
    expect_op(&mut c, "meta").await;
    assert_eq!(whoami(&mut c).await.as_deref(), Some("dan"));

    let mut c = server.client().await;
    // A signature with no challenge asked for.
    let p = request(&mut c, signature_auth("dan", &sig)).await;
    assert_eq!(p.ex_str("code"), Some("auth/challenge-expired"));
    // A wrong key's signature; the challenge is then used up.
    let ch = challenge(&mut c, "dan").await;
    let wrong = B64.encode(
        key(8)
            .sign(signed_message("localhost", "dan", &ch).as_bytes())
            .to_bytes(),
    );
    let p = request(&mut c, signature_auth("dan", &wrong)).await;
    assert_eq!(p.ex_str("code"), Some("auth/failed"));
    let right = B64.encode(
        k.sign(signed_message("localhost", "dan", &ch).as_bytes())
            .to_bytes(),
    );
    let p = request(&mut c, signature_auth("dan", &right)).await;
    assert_eq!(p.ex_str("code"), Some("auth/challenge-expired"));
    // Signature over another server's message.
    let ch = challenge(&mut c, "dan").await;
    let other = B64.encode(
        k.sign(signed_message("10b.it", "dan", &ch).as_bytes())
            .to_bytes(),
    );
    let p = request(&mut c, signature_auth("dan", &other)).await;
    assert_eq!(p.ex_str("code"), Some("auth/failed"));
    // Garbage signature.
    challenge(&mut c, "dan").await;
    let p = request(&mut c, signature_auth("dan", "%%%")).await;
    assert_eq!(p.ex_str("code"), Some("auth/failed"));
    // A challenge for one name answered for another.
    let ch = challenge(&mut c, "someone").await;
    let s = B64.encode(
        k.sign(signed_message("localhost", "dan", &ch).as_bytes())
            .to_bytes(),
    );
    let p = request(&mut c, signature_auth("dan", &s)).await;
    assert_eq!(p.ex_str("code"), Some("auth/challenge-expired"));

    // A removed key no longer logs in.
    let p = request(
        &mut home,
        Packet::request("key-remove").with("key", public(&k)),
    )
    .await;
    assert_eq!(p.op, "ack");
    let mut c = server.client().await;
    let ch = challenge(&mut c, "dan").await;
    let s = B64.encode(
        k.sign(signed_message("localhost", "dan", &ch).as_bytes())
            .to_bytes(),
    );
    let p = request(&mut c, signature_auth("dan", &s)).await;
    assert_eq!(p.ex_str("code"), Some("auth/failed"));
    server.stop().await;
}

#[tokio::test]
async fn expired_challenge_is_refused() {
    let server = TestServer::start_with(|c| c.auth.challenge_ttl_ms = 1).await;
    server.register("dan", "hellosecret").await;
    let mut home = server.login("dan", "hellosecret").await;
    let k = key(9);
    request(
        &mut home,
        Packet::request("key-add").with("key", public(&k)),
    )
    .await;
    let mut c = server.client().await;
    let ch = challenge(&mut c, "dan").await;
    // Waiting out the 1 ms lifetime is the behaviour under test.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let s = B64.encode(
        k.sign(signed_message("localhost", "dan", &ch).as_bytes())
            .to_bytes(),
    );
    let p = request(&mut c, signature_auth("dan", &s)).await;
    assert_eq!(p.ex_str("code"), Some("auth/challenge-expired"));
    server.stop().await;
}

#[tokio::test]
async fn failed_logins_are_throttled_per_account_and_address() {
    let server = TestServer::start_with(|c| {
        c.auth.max_failures_per_account = 3;
        c.auth.max_failures_per_ip = 5;
        c.auth.failure_window_ms = 600_000;
    })
    .await;
    server.register("dan", "hellosecret").await;
    server.register("amy", "hellosecret").await;
    let mut c = server.client().await;
    for _ in 0..3 {
        let p = request(&mut c, password_auth("dan", "wrong-password")).await;
        assert_eq!(p.ex_str("code"), Some("auth/failed"));
    }
    // Even the right password waits now, and no hash is spent on it.
    let p = request(&mut c, password_auth("DAN", "hellosecret")).await;
    assert_eq!(p.ex_str("code"), Some("auth/throttled"));
    let retry = p.ex.get("retry_after_ms").and_then(|v| v.as_u64()).unwrap();
    assert!(retry > 0 && retry <= 200_000, "{retry}");
    // Another account from the same address still may, until the address
    // allowance (5) is spent.
    for _ in 0..2 {
        let p = request(&mut c, password_auth("amy", "wrong-password")).await;
        assert_eq!(p.ex_str("code"), Some("auth/failed"));
    }
    let p = request(&mut c, password_auth("amy", "hellosecret")).await;
    assert_eq!(p.ex_str("code"), Some("auth/throttled"));
    // Bad tickets count against the address too.
    let p = request(&mut c, ticket_auth("NOPE", "localhost")).await;
    assert_eq!(p.ex_str("code"), Some("auth/throttled"));
    server.stop().await;
}

/// An account deleted behind sends still committing: their acks come
/// first, then the export, then `bye`.
#[tokio::test]
async fn deleting_an_account_answers_its_earlier_sends_first() {
    let server = TestServer::start().await;
    let (mut dan, topic) = server.with_topic("dan", "last").await;
    let mut batch = Vec::new();
    for n in 0..5 {
        batch.extend_from_slice(&on("send", &topic).with_id(format!("s{n}")).to_line());
    }
    batch.extend_from_slice(
        &Packet::request("delete-account")
            .with("password", "hellosecret")
            .with_id("gone")
            .to_line(),
    );
    dan.send_raw(&batch).await.expect("sent");
    for n in 0..5 {
        let ack = expect_op(&mut dan, "ack").await;
        assert_eq!(ack.ex_str("for"), Some(format!("s{n}").as_str()));
    }
    let export = expect_op(&mut dan, "export").await;
    assert_eq!(export.ex_str("for"), Some("gone"));
    expect_bye(&mut dan, "account/deleted").await;
    expect_clean_close(&mut dan).await;
    server.stop().await;
}

#[tokio::test]
async fn deleting_an_account_exports_it_and_ends_its_sessions() {
    let server = TestServer::start().await;
    server.register("dan", "hellosecret").await;
    let mut a = server.login("dan", "hellosecret").await;
    let mut b = server.login("dan", "hellosecret").await;
    request(&mut a, Packet::request("meta").with("fullname", "Dan Opia")).await;
    let k = key(3);
    request(&mut a, Packet::request("key-add").with("key", public(&k))).await;
    let ticket = get_ticket(&mut a, None).await;

    let p = request(
        &mut a,
        Packet::request("delete-account").with("password", "wrong-password"),
    )
    .await;
    assert_eq!(p.ex_str("code"), Some("auth/failed"));
    let p = request(
        &mut a,
        Packet::request("delete-account").with("password", "hellosecret"),
    )
    .await;
    assert_eq!(p.op, "export", "{p:?}");
    assert_eq!(
        p.ex.get("account")
            .and_then(|v| v.get("name"))
            .and_then(|v| v.as_str()),
        Some("dan")
    );
    assert_eq!(
        p.ex.get("meta")
            .and_then(|m| m.get("fullname"))
            .and_then(|v| v.as_str()),
        Some("Dan Opia")
    );
    assert_eq!(p.ex.get("keys"), Some(&serde_json::json!([public(&k)])));
    assert_eq!(p.ex.get("topics"), Some(&serde_json::json!([])));
    expect_bye(&mut a, "account/deleted").await;
    expect_clean_close(&mut a).await;
    expect_bye(&mut b, "account/deleted").await;
    expect_clean_close(&mut b).await;

    // Nothing logs in as dan any more: password, ticket or key.
    let mut c = server.client().await;
    let p = request(&mut c, password_auth("dan", "hellosecret")).await;
    assert_eq!(p.ex_str("code"), Some("auth/failed"));
    let p = request(&mut c, ticket_auth(&ticket, "localhost")).await;
    assert_eq!(p.ex_str("code"), Some("ticket/invalid"));
    let ch = challenge(&mut c, "dan").await;
    let s = B64.encode(
        k.sign(signed_message("localhost", "dan", &ch).as_bytes())
            .to_bytes(),
    );
    let p = request(&mut c, signature_auth("dan", &s)).await;
    assert_eq!(p.ex_str("code"), Some("auth/failed"));
    server.stop().await;
}

#[tokio::test]
async fn a_deleted_accounts_hash_and_keys_leave_the_store() {
    let server = TestServer::start().await;
    server.register("dan", "hellosecret").await;
    let mut a = server.login("dan", "hellosecret").await;
    let k = key(4);
    request(&mut a, Packet::request("key-add").with("key", public(&k))).await;
    let old = key(5);
    request(&mut a, Packet::request("key-add").with("key", public(&old))).await;
    request(
        &mut a,
        Packet::request("key-remove").with("key", public(&old)),
    )
    .await;
    let p = request(
        &mut a,
        Packet::request("delete-account").with("password", "hellosecret"),
    )
    .await;
    assert_eq!(p.op, "export", "{p:?}");
    // Stopped, the data directory kept: what is on disk.
    let TestServer { handle, dir, .. } = server;
    handle.shutdown().await;
    let text = store_text(&dir.path().join("data"));
    // The store holds no other account: no argon2 hash is left at all.
    assert!(!text.contains("$argon2"), "{text}");
    for k in [&k, &old] {
        assert!(!text.contains(&public(k)), "{text}");
    }
    assert!(text.contains("account.delete") && text.contains("\"dan\""));
}

/// Wrong passwords sent at once over many connections from one address each
/// take their token before the hash: at most the allowance are checked
/// (`auth/failed`), the rest are `auth/throttled`. Checked before and
/// charged after the hash, every attempt in flight passed the check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_wrong_passwords_cannot_outrun_the_throttle() {
    const CONNS: usize = 24;
    const SAME_ACCOUNT: usize = 8;
    let server = TestServer::start_with(|c| {
        // Every attempt is in flight at once.
        slow_hashes(c);
        c.auth.max_failures_per_account = 3;
        c.auth.max_failures_per_ip = 10;
        c.auth.failure_window_ms = 3_600_000;
    })
    .await;
    let mut conns = Vec::new();
    for _ in 0..CONNS {
        conns.push(server.client().await);
    }
    // The first connections all guess dan's password, the rest other names'.
    let name = |i: usize| match i < SAME_ACCOUNT {
        true => "dan".to_owned(),
        false => format!("user{i}"),
    };
    for (i, c) in conns.iter_mut().enumerate() {
        c.send(&password_auth(&name(i), "wrong-password").with_id(format!("a{i}")))
            .await
            .unwrap();
    }
    let (mut failed_dan, mut failed, mut throttled) = (0, 0, 0);
    for (i, c) in conns.iter_mut().enumerate() {
        let p = expect_op(c, "error").await;
        match p.ex_str("code") {
            Some("auth/failed") if i < SAME_ACCOUNT => failed_dan += 1,
            Some("auth/failed") => failed += 1,
            Some("auth/throttled") => throttled += 1,
            _ => panic!("{p:?}"),
        }
    }
    assert!(
        failed_dan <= 3,
        "{failed_dan} of dan's checked, allowance 3"
    );
    // Every token of the address was there to take, and no more.
    assert_eq!(failed_dan + failed, 10, "checked, allowance 10");
    assert_eq!(throttled, CONNS - 10);
    server.stop().await;
}

/// A signature answered `auth/throttled` has still used its challenge up:
/// once the allowance refills, the same answer finds no challenge.
#[tokio::test]
async fn a_throttled_signature_uses_its_challenge_up() {
    let server = TestServer::start_with(|c| {
        c.auth.max_failures_per_account = 1;
        c.auth.failure_window_ms = 200;
    })
    .await;
    server.register("dan", "hellosecret").await;
    let mut home = server.login("dan", "hellosecret").await;
    let k = key(7);
    let added = request(
        &mut home,
        Packet::request("key-add").with("key", public(&k)),
    )
    .await;
    assert_eq!(added.op, "ack", "{added:?}");
    let mut c = server.client().await;
    let ch = challenge(&mut c, "dan").await;
    let s = B64.encode(
        k.sign(signed_message("localhost", "dan", &ch).as_bytes())
            .to_bytes(),
    );
    // Another connection spends dan's one failure.
    let mut other = server.client().await;
    let p = request(&mut other, password_auth("dan", "wrong-password")).await;
    assert_eq!(p.ex_str("code"), Some("auth/failed"));
    let p = request(&mut c, signature_auth("dan", &s)).await;
    assert_eq!(p.ex_str("code"), Some("auth/throttled"), "{p:?}");
    // Waiting for the allowance to refill is the behaviour under test.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let p = request(&mut c, signature_auth("dan", &s)).await;
    assert_eq!(p.ex_str("code"), Some("auth/challenge-expired"), "{p:?}");
    server.stop().await;
}

/// After the operator changes the argon2 cost, an account's next login
/// hashes its password again at the new cost: its logins then take what an
/// unknown name's do.
#[tokio::test]
async fn a_login_hashes_a_password_again_at_a_new_cost() {
    let server = TestServer::start().await;
    server.register("dan", "hellosecret").await;
    let data = server.dir.path().join("data");
    assert!(store_text(&data).contains("$argon2id$v=19$m=64,t=1,p=1$"));
    let server = server
        .restart(|c| {
            c.auth.argon2_memory_kib = 128;
            c.auth.argon2_iterations = 2;
        })
        .await;
    let mut c = server.client().await;
    let p = request(&mut c, password_auth("dan", "wrong-password")).await;
    assert_eq!(p.ex_str("code"), Some("auth/failed"));
    assert!(!store_text(&data).contains("m=128,t=2"));
    let mut dan = server.login("dan", "hellosecret").await;
    assert_alive(&mut dan).await;
    assert!(store_text(&data).contains("$argon2id$v=19$m=128,t=2,p=1$"));
    let mut again = server.login("dan", "hellosecret").await;
    assert_alive(&mut again).await;
    server.stop().await;
}
