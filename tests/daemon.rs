//! The real `tenthbitd` binary: first run with embedded defaults (certificate
//! generated, key mode 0600, reused on restart), SIGTERM handling, and the
//! `check-config` / `config` subcommands.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use common::*;
use tenthbit::client::{Client, Options};
use tenthbit::tls::pin::parse_fingerprint;

const BIN: &str = env!("CARGO_BIN_EXE_tenthbitd");

struct Daemon {
    child: Option<Child>,
    addr: String,
    fingerprint: [u8; 32],
    openssl_line: String,
    log: mpsc::Receiver<String>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts the binary in `dir` (so certs/ and data/ land there) on an
/// ephemeral port, and reads its startup log lines.
fn spawn_daemon(dir: &Path) -> Daemon {
    spawn_daemon_with(dir, &[], None)
}

fn spawn_daemon_with(dir: &Path, args: &[&str], rust_log: Option<&str>) -> Daemon {
    let mut cmd = Command::new(BIN);
    match rust_log {
        Some(filter) => cmd.env("RUST_LOG", filter),
        None => cmd.env_remove("RUST_LOG"),
    };
    let mut child = cmd
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tenthbitd");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (mut addr, mut fp, mut openssl) = (None, None, None);
    while addr.is_none() || fp.is_none() || openssl.is_none() {
        let line = rx.recv_timeout(WAIT).expect("daemon logs its startup");
        if let Some(rest) = line
            .split("addr=")
            .nth(1)
            .filter(|_| line.contains("listening"))
        {
            addr = rest.split_whitespace().next().map(str::to_owned);
        }
        if let Some(rest) = line.split("sha256=").nth(1) {
            fp = rest.split_whitespace().next().and_then(parse_fingerprint);
        }
        if let Some(rest) = line.split("command=").nth(1) {
            openssl = Some(rest.trim().to_owned());
        }
    }
    Daemon {
        child: Some(child),
        addr: addr.unwrap(),
        fingerprint: fp.unwrap(),
        openssl_line: openssl.unwrap(),
        log: rx,
    }
}

/// Every remaining log line, up to the end of the daemon's stderr (it has
/// exited, so the pipe closes).
fn drain_log(log: &mpsc::Receiver<String>) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        match log.recv_timeout(WAIT) {
            Ok(line) => lines.push(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => return lines,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("daemon stderr did not close"),
        }
    }
}

/// A config file in `dir` with cheap password hashing (the suite stays
/// fast; production defaults stay strong); returns its path.
fn cheap_config(dir: &Path) -> String {
    let path = dir.join("tenthbitd.toml");
    std::fs::write(
        &path,
        "[auth]\nargon2_memory_kib = 64\nargon2_iterations = 1\n",
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

fn sigterm(d: &Daemon) {
    let child = d.child.as_ref().expect("daemon still owned");
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill(2) with a pid we spawned and a valid signal number.
    let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(rc, 0);
}

/// Waits for the daemon to exit (on a thread blocked in wait(2), so no
/// polling); SIGKILLs it and fails if it takes longer than `WAIT`.
fn wait_exit(d: &mut Daemon) -> std::process::ExitStatus {
    let mut child = d.child.take().expect("daemon still owned");
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(WAIT) {
        Ok(status) => status.unwrap(),
        Err(_) => {
            // SAFETY: kill(2) on the pid we spawned.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("daemon did not exit after SIGTERM");
        }
    }
}

#[tokio::test]
async fn first_run_generates_a_certificate_and_sigterm_says_bye() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = spawn_daemon(dir.path());
    let key = dir.path().join("certs/tenthbitd.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "key file mode");
    assert!(dir.path().join("certs/tenthbitd.crt").exists());
    assert!(dir.path().join("data").is_dir());
    assert_eq!(
        d.openssl_line,
        format!("openssl s_client -connect {} -quiet", d.addr)
    );

    let opts = Options::pinned(d.fingerprint);
    let mut a = Client::connect(&d.addr, &opts).await.unwrap();
    expect_op(&mut a, "welcome").await;
    let mut b = Client::connect(
        &d.addr,
        &opts.clone().with_alpn(vec![tenthbit::tls::Alpn::Gzip]),
    )
    .await
    .unwrap();
    expect_op(&mut b, "welcome").await;
    assert_alive(&mut a).await;

    sigterm(&d);
    for c in [&mut a, &mut b] {
        expect_bye(c, "server/shutdown").await;
        expect_clean_close(c).await;
    }
    let status = wait_exit(&mut d);
    assert!(status.success(), "exit status {status:?}");
    let log = drain_log(&d.log);
    assert!(
        log.iter()
            .any(|l| l.contains("shutdown requested") && l.contains("SIGTERM")),
        "{log:#?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("connection closed") && l.contains("server shutdown")),
        "{log:#?}"
    );

    // A restart reuses the same certificate.
    let first = d.fingerprint;
    drop(d);
    let d = spawn_daemon(dir.path());
    assert_eq!(d.fingerprint, first);
}

#[test]
fn check_config_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[limits]\nmax_line_bytez = 100\n").unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_line_bytez"), "{err}");

    std::fs::write(
        &bad,
        "[limits]\nidle_timeout_ms = 10\nkeepalive_interval_ms = 20\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("limits.idle_timeout_ms"));

    // The printed defaults are a valid config file.
    let out = Command::new(BIN).arg("config").output().unwrap();
    assert!(out.status.success());
    let good = dir.path().join("good.toml");
    std::fs::write(&good, &out.stdout).unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&good)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_certificate_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let write_pair = |name: &str| {
        let pair = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert = dir.path().join(format!("{name}.crt"));
        let key = dir.path().join(format!("{name}.key"));
        std::fs::write(&cert, pair.cert.pem()).unwrap();
        std::fs::write(&key, pair.signing_key.serialize_pem()).unwrap();
        (cert, key)
    };
    let (cert_a, _) = write_pair("a");
    let (_, key_b) = write_pair("b");
    let check = |cert: &Path, key: &Path| {
        Command::new(BIN)
            .arg("check-config")
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key)
            .output()
            .unwrap()
    };
    // Key of another certificate.
    let out = check(&cert_a, &key_b);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a.crt") && err.contains("b.key"), "{err}");
    // Missing key next to an existing certificate.
    let out = check(&cert_a, &dir.path().join("missing.key"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.key"));
    // Not PEM at all.
    let junk = dir.path().join("junk.crt");
    std::fs::write(&junk, "hello").unwrap();
    let out = check(&junk, &key_b);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("junk.crt"));
}

/// A missing mesh or federation certificate names the setting to fix, once:
/// not `tls.cert_file` (the client port's, which is there), and not the
/// same message twice over.
#[test]
fn a_missing_mesh_or_federation_certificate_names_its_setting() {
    let dir = tempfile::tempdir().unwrap();
    let pair = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(dir.path().join("t.crt"), pair.cert.pem()).unwrap();
    std::fs::write(dir.path().join("t.key"), pair.signing_key.serialize_pem()).unwrap();
    let common = "[server]\nlisten = [\"127.0.0.1:0\"]\ndata_dir = \"data\"\n\
                  [tls]\ncert_file = \"t.crt\"\nkey_file = \"t.key\"\nself_signed = false\n";
    for (section, key) in [
        (
            "[mesh]\nenabled = true\nlisten = \"127.0.0.1:0\"\ncert_file = \"m.crt\"\nkey_file = \"m.key\"\n",
            "mesh.cert_file",
        ),
        (
            "[federation]\nenabled = true\nlisten = \"127.0.0.1:0\"\ncert_file = \"f.crt\"\nkey_file = \"f.key\"\n",
            "federation.cert_file",
        ),
    ] {
        let config = dir.path().join("t.toml");
        std::fs::write(&config, format!("{common}{section}")).unwrap();
        let out = Command::new(BIN)
            .env_remove("RUST_LOG")
            .arg("--config")
            .arg(&config)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or_default();
        assert!(last.starts_with("tenthbitd: "), "{err}");
        assert!(
            last.contains(key) && !last.contains("tls.cert_file"),
            "{key}: {last}"
        );
        assert_eq!(last.matches("does not exist").count(), 1, "{last}");
    }
}

/// Everything a user keeps survives a restart of the real binary, and no
/// password, ticket, challenge or signature appears in its logs, even at
/// trace level.
#[tokio::test]
async fn restart_keeps_accounts_and_logs_hold_no_secret() {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as B64;
    use ed25519_dalek::Signer;
    use tenthbit::proto::Packet;

    let dir = tempfile::tempdir().unwrap();
    let config = cheap_config(dir.path());
    let args = ["--config", config.as_str()];
    let password = "pw-SECRET-d4e5f6";
    let wrong = "pw-WRONG-a1b2c3";
    let key = ed25519_dalek::SigningKey::from_bytes(&[5u8; 32]);
    let public = B64.encode(key.verifying_key().as_bytes());
    let mut secrets = vec![password.to_owned(), wrong.to_owned()];

    let mut d = spawn_daemon_with(dir.path(), &args, Some("trace"));
    let opts = Options::pinned(d.fingerprint);
    let mut c = Client::connect(&d.addr, &opts).await.unwrap();
    expect_op(&mut c, "welcome").await;
    let p = request(
        &mut c,
        Packet::request("register")
            .with("username", "dan")
            .with("password", password),
    )
    .await;
    assert_eq!(p.op, "ack", "{p:?}");
    let p = request(&mut c, password_auth("dan", wrong)).await;
    assert_eq!(p.ex_str("code"), Some("auth/failed"));
    let p = request(&mut c, password_auth("dan", password)).await;
    assert_eq!(p.op, "ack");
    expect_op(&mut c, "meta").await;
    expect_op(&mut c, "meta").await;
    request(&mut c, Packet::request("meta").with("fullname", "Dan Opia")).await;
    request(
        &mut c,
        Packet::request("key-add").with("key", public.clone()),
    )
    .await;
    let t = request(&mut c, Packet::request("ticket")).await;
    let ticket = t.ex_str("ticket").unwrap().to_owned();
    secrets.push(ticket.clone());
    let mut other = Client::connect(&d.addr, &opts).await.unwrap();
    expect_op(&mut other, "welcome").await;
    let p = request(
        &mut other,
        Packet::request("auth")
            .with("method", "ticket")
            .with("ticket", ticket)
            .with("server", "localhost"),
    )
    .await;
    assert_eq!(p.op, "ack");

    sigterm(&d);
    assert!(wait_exit(&mut d).success());
    let mut log = drain_log(&d.log);
    drop(d);

    // Restart: the account, its key and its metadata are there.
    let mut d = spawn_daemon_with(dir.path(), &args, Some("trace"));
    let mut c = Client::connect(&d.addr, &Options::pinned(d.fingerprint))
        .await
        .unwrap();
    expect_op(&mut c, "welcome").await;
    let p = request(
        &mut c,
        Packet::request("auth")
            .with("method", "pubkey")
            .with("username", "dan"),
    )
    .await;
    let challenge = p.ex_str("challenge").unwrap().to_owned();
    let sig = B64.encode(
        key.sign(tenthbit::session::signed_message("localhost", "dan", &challenge).as_bytes())
            .to_bytes(),
    );
    secrets.push(challenge);
    secrets.push(sig.clone());
    let p = request(
        &mut c,
        Packet::request("auth")
            .with("method", "pubkey")
            .with("username", "dan")
            .with("signature", sig),
    )
    .await;
    assert_eq!(p.op, "ack", "{p:?}");
    expect_op(&mut c, "meta").await;
    let own = expect_op(&mut c, "meta").await;
    assert_eq!(own.ex_str("fullname"), Some("Dan Opia"));
    sigterm(&d);
    assert!(wait_exit(&mut d).success());
    log.extend(drain_log(&d.log));

    assert!(
        log.iter().any(|l| l.contains("logged in")),
        "logs were captured"
    );
    for secret in &secrets {
        let hits: Vec<&String> = log.iter().filter(|l| l.contains(secret.as_str())).collect();
        assert!(hits.is_empty(), "secret {secret:?} logged: {hits:#?}");
    }
}

/// Under load, SIGKILL loses nothing that was acknowledged: every message
/// whose `ack` a client received is in the topic's history after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_message() {
    use std::sync::{Arc, Mutex};
    use tenthbit::proto::Packet;

    let dir = tempfile::tempdir().unwrap();
    let config = cheap_config(dir.path());
    let args = ["--config", config.as_str()];
    let mut d = spawn_daemon_with(dir.path(), &args, None);
    let opts = Options::pinned(d.fingerprint);

    let mut owner = Client::connect(&d.addr, &opts).await.unwrap();
    expect_op(&mut owner, "welcome").await;
    let reg = |n: &str| {
        Packet::request("register")
            .with("username", n)
            .with("password", "hellosecret")
    };
    assert_eq!(request(&mut owner, reg("owner")).await.op, "ack");
    request(&mut owner, password_auth("owner", "hellosecret")).await;
    let topic = request(&mut owner, Packet::request("create").with("name", "load"))
        .await
        .topic
        .unwrap();

    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let enough = Arc::new(tokio::sync::Notify::new());
    let mut senders = Vec::new();
    for s in 0..4 {
        let (addr, opts, topic, acked, enough) = (
            d.addr.clone(),
            opts.clone(),
            topic.clone(),
            acked.clone(),
            enough.clone(),
        );
        let mut c = Client::connect(&addr, &opts).await.unwrap();
        expect_op(&mut c, "welcome").await;
        let name = format!("sender{s}");
        assert_eq!(request(&mut c, reg(&name)).await.op, "ack");
        request(&mut c, password_auth(&name, "hellosecret")).await;
        let mut join = Packet::request("join");
        join.topic = Some(topic.clone());
        request(&mut c, join).await;
        senders.push(tokio::spawn(async move {
            // Pipelined: several sends in flight, acks read as they come.
            let mut n = 0u64;
            'outer: loop {
                let mut batch = Vec::new();
                for _ in 0..8 {
                    let mut p = Packet::request("send")
                        .with_id(format!("{name}-{n}"))
                        .with("n", n);
                    p.topic = Some(topic.clone());
                    batch.extend_from_slice(&p.to_line());
                    n += 1;
                }
                if c.send_raw(&batch).await.is_err() {
                    break;
                }
                // Other senders' relays arrive too; read until this batch's acks.
                let mut acks = 0;
                while acks < 8 {
                    match c.recv_timeout(WAIT).await {
                        Ok(p) if p.op == "ack" => {
                            acks += 1;
                            let id = p.ex_str("id").unwrap().to_owned();
                            let mut a = acked.lock().unwrap();
                            a.push(id);
                            if a.len() >= 400 {
                                enough.notify_one();
                            }
                        }
                        // Login metas, joins and other senders' relays.
                        Ok(p) if p.op != "error" && p.op != "bye" => {}
                        _ => break 'outer,
                    }
                }
            }
        }));
    }
    tokio::time::timeout(WAIT, enough.notified())
        .await
        .expect("load reached 400 acks");
    let pid = libc::pid_t::try_from(d.child.as_ref().unwrap().id()).unwrap();
    // SAFETY: kill(2) on the pid we spawned.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    for s in senders {
        s.await.unwrap();
    }
    let status = wait_exit(&mut d);
    assert!(!status.success());
    drop(d);
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 400);

    let d = spawn_daemon_with(dir.path(), &args, None);
    let mut c = Client::connect(&d.addr, &Options::pinned(d.fingerprint))
        .await
        .unwrap();
    expect_op(&mut c, "welcome").await;
    request(&mut c, password_auth("owner", "hellosecret")).await;
    let mut kept = std::collections::HashSet::new();
    let mut before: Option<String> = None;
    loop {
        let mut h = Packet::request("history").with("limit", 200);
        h.topic = Some(topic.clone());
        if let Some(b) = &before {
            h = h.with("before", b.as_str());
        }
        let page = request(&mut c, h).await;
        assert_eq!(page.op, "history", "{page:?}");
        let msgs = page.ex["messages"].as_array().unwrap().clone();
        for m in &msgs {
            kept.insert(m["id"].as_str().unwrap().to_owned());
        }
        if page.ex["more"] != serde_json::json!(true) || msgs.is_empty() {
            break;
        }
        before = msgs[0]["id"].as_str().map(str::to_owned);
    }
    let lost: Vec<&String> = acked.iter().filter(|id| !kept.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged messages lost",
        lost.len(),
        acked.len()
    );
}
