//! The web client in a real browser: headless Chromium (Debian's `chromium`
//! and `chromium-driver`) driven by Selenium (`tests/browser/chat.py`),
//! against a real daemon in this process. The page shows a failed login's
//! error, logs in, creates a topic, finds and joins another, scrolls back
//! through its history, chats with a 10bit client over TLS both ways, then
//! reconnects by itself after the server restarts. `.ci/run` installs what it needs; a
//! missing piece fails the test with what to install, never skips it.
//!
//! Alone: `cargo test --test browser`.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use tenthbit::client::Client;
use tenthbit::proto::Packet;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

/// How long the script may take for one step (Chromium starts slowly on a
/// busy machine; the script's own waits are 30 s each).
const STEP: Duration = Duration::from_secs(120);

/// The script, its pipes, and what it printed to stderr.
struct Script {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    stderr: tokio::task::JoinHandle<String>,
}

impl Script {
    fn start(url: &str, shots: &std::path::Path) -> Script {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser/chat.py");
        let mut child = tokio::process::Command::new("python3")
            .arg(&script)
            .args([url, "alice", "alicesecret", "lobby"])
            .arg(shots)
            .env("SE_OFFLINE", "true")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "the browser test needs python3 with selenium, chromium and chromium-driver \
                     (see .ci/run); starting python3 failed: {e}"
                )
            });
        let stdin = child.stdin.take().expect("stdin piped");
        let lines = BufReader::new(child.stdout.take().expect("stdout piped")).lines();
        let mut err = child.stderr.take().expect("stderr piped");
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text).await;
            text
        });
        Script {
            child,
            stdin,
            lines,
            stderr,
        }
    }

    /// The script's next line, which must start with `word`; the rest of it.
    async fn hear(&mut self, word: &str) -> String {
        let line = tokio::time::timeout(STEP, self.lines.next_line()).await;
        match line {
            Ok(Ok(Some(line))) => match line.split_once(' ') {
                Some((w, rest)) if w == word => rest.to_owned(),
                _ if line == word => String::new(),
                _ => self.fail(&format!("expected {word}, got {line:?}")).await,
            },
            Ok(Ok(None)) => self.fail(&format!("the script ended before {word}")).await,
            Ok(Err(e)) => self.fail(&format!("reading the script: {e}")).await,
            Err(_) => {
                self.fail(&format!("no {word} from the script in time"))
                    .await
            }
        }
    }

    async fn say(&mut self, line: &str) {
        let sent = self.stdin.write_all(format!("{line}\n").as_bytes()).await;
        if let Err(e) = sent {
            self.fail(&format!("the script went away: {e}")).await;
        }
    }

    /// Ends the test with the script's exit status and stderr.
    async fn fail(&mut self, what: &str) -> ! {
        let _ = self.child.start_kill();
        let status = self.child.wait().await;
        let stderr = (&mut self.stderr).await.unwrap_or_default();
        let hint = if stderr.contains("MISSING") {
            "\nInstall what is missing (.ci/run does: apt-get install chromium chromium-driver; \
             pip install selenium)."
        } else {
            ""
        };
        panic!(
            "browser test: {what}; script exit: {status:?}\n--- script stderr ---\n{stderr}{hint}"
        );
    }
}

/// The next `send` event on `c`, skipping other events (joins).
async fn next_message(c: &mut Client) -> Packet {
    loop {
        let p = c.recv_timeout(STEP).await.expect("an event in time");
        if p.op == "send" {
            return p;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_client_chats_with_a_tls_client_in_chromium() {
    let server = TestServer::start().await;
    server.register("alice", "alicesecret").await;
    server.register("dan", "dansecret1").await;
    let mut dan = server.login("dan", "dansecret1").await;
    let created = request(&mut dan, Packet::request("create").with("name", "lobby")).await;
    let topic = created.topic.expect("topic id");
    // More than the page's first history page (50), to scroll back through.
    for i in 0..55 {
        let mut old = Packet::request("send").with("body", format!("old {i}"));
        old.topic = Some(topic.clone());
        assert_eq!(request(&mut dan, old).await.op, "ack");
    }

    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser");
    let url = format!("https://127.0.0.1:{}/", server.addr.port());
    let mut script = Script::start(&url, &shots);

    // The page sends; the TLS client receives.
    let sent = script.hear("SENT").await;
    let got = next_message(&mut dan).await;
    assert_eq!(got.from.as_deref(), Some("alice"), "{got:?}");
    assert_eq!(got.ex_str("body"), Some(sent.as_str()));

    // The TLS client sends; the page shows it.
    let mut reply = Packet::request("send").with("body", "hello from tls");
    reply.topic = Some(topic.clone());
    assert_eq!(request(&mut dan, reply).await.op, "ack");
    script.say("REPLIED hello from tls").await;
    script.hear("SEEN").await;

    // The server restarts on the same port; the page logs in again by itself.
    let server = server.restart_same_port(|_| {}).await;
    let mut dan = server.login("dan", "dansecret1").await;
    script.say("RESTARTED").await;
    let sent = script.hear("SENT").await;
    let got = next_message(&mut dan).await;
    assert_eq!(got.from.as_deref(), Some("alice"), "{got:?}");
    assert_eq!(got.ex_str("body"), Some(sent.as_str()));
    script.say("DONE").await;
    script.hear("OK").await;
    let status = tokio::time::timeout(STEP, script.child.wait()).await;
    if !matches!(status, Ok(Ok(s)) if s.success()) {
        script.fail("the script did not exit cleanly").await;
    }
    server.stop().await;
}
