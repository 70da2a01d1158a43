//! The interactive client's language: slash commands turned into packets,
//! and packets rendered as lines a person reads (times, topic names instead
//! of UUIDs). No I/O here; `tenthbit connect` drives it.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use crate::proto::Packet;

/// What the interactive client knows: topic names by UUID, and the topic
/// that plain lines go to.
#[derive(Debug, Default)]
pub struct State {
    names: HashMap<String, String>,
    /// The current topic's UUID.
    pub current: Option<String>,
}

/// What a typed line asks for.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Send this packet.
    Send(Packet),
    /// Log in or register: ask for the password, then send (it is never typed
    /// on the command line).
    AskPassword {
        /// `auth` or `register`.
        op: &'static str,
        /// The account name.
        username: String,
    },
    /// Print this to the user (help, a local change).
    Say(String),
    /// Leave the program.
    Quit,
}

/// The commands, for `/help`.
pub const HELP: &str = "\
/login NAME            log in (asks for the password)
/register NAME         create an account (asks for the password)
/join NAME             join a topic and make it current
/topic NAME            make a joined topic current
/leave [NAME]          leave a topic (the current one by default)
/msg NAME TEXT         send to a topic; a line without / goes to the current topic
/create NAME           create a topic
/delete                delete the current topic (owner)
/history [N]           the last N messages of the current topic
/meta [KEY VALUE]      read your metadata, or set KEY
/tmeta [KEY VALUE]     read the current topic's metadata, or set KEY
/acl [SUBJECT +F -F]   read the current topic's ACL, or change SUBJECT's flags
/find TEXT             find topics; /users TEXT finds users
/ticket [SERVER]       a login ticket; /keys lists your keys; /whoami
/raw JSON              send a packet as it is
/quit                  leave";

impl State {
    /// Learns topic names from what the server says; with no current topic,
    /// the next topic `meta` (a join's answer, or the login sequence's
    /// first topic) makes its topic current.
    pub fn observe(&mut self, p: &Packet) {
        if let (Some(topic), Some(name)) = (p.topic.as_ref(), p.ex_str("name")) {
            if p.op == "meta" {
                self.names.insert(topic.clone(), name.to_owned());
                if self.current.is_none() {
                    self.current = Some(topic.clone());
                }
            }
        }
    }

    /// `#name` for a topic UUID, or the UUID when its name is unknown.
    pub fn topic_label(&self, topic: &str) -> String {
        match self.names.get(topic) {
            Some(name) => format!("#{name}"),
            None => topic.to_owned(),
        }
    }

    /// The UUID of a topic named (or given by UUID) by the user, if known.
    fn resolve(&self, name: &str) -> Option<String> {
        let name = name.trim_start_matches('#');
        if self.names.contains_key(name) {
            return Some(name.to_owned());
        }
        self.names
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(name))
            .map(|(id, _)| id.clone())
    }

    fn on_topic(&self, op: &str, name: Option<&str>) -> Result<Packet, String> {
        let topic = match name {
            Some(n) => self
                .resolve(n)
                .unwrap_or_else(|| n.trim_start_matches('#').to_owned()),
            None => self
                .current
                .clone()
                .ok_or("no current topic: /join one first")?,
        };
        let mut p = Packet::request(op);
        p.topic = Some(topic);
        Ok(p)
    }

    /// Turns a typed line into what to do.
    pub fn parse(&mut self, line: &str) -> Result<Action, String> {
        let line = line.trim();
        let Some(command) = line.strip_prefix('/') else {
            if line.is_empty() {
                return Ok(Action::Say(String::new()));
            }
            return Ok(Action::Send(
                self.on_topic("send", None)?.with("body", line),
            ));
        };
        let (cmd, rest) = command.split_once(' ').unwrap_or((command, ""));
        let rest = rest.trim();
        let arg = (!rest.is_empty()).then_some(rest);
        let need = |what: &str| format!("/{cmd} needs {what}");
        let send = |p: Packet| Ok(Action::Send(p));
        match cmd {
            "help" => Ok(Action::Say(HELP.to_owned())),
            "quit" | "exit" => Ok(Action::Quit),
            "login" | "register" => Ok(Action::AskPassword {
                op: if cmd == "login" { "auth" } else { "register" },
                username: arg.ok_or_else(|| need("a name"))?.to_owned(),
            }),
            "join" => send(
                Packet::request("join").with(
                    "name",
                    arg.ok_or_else(|| need("a topic name"))?
                        .trim_start_matches('#'),
                ),
            ),
            "topic" => {
                let name = arg.ok_or_else(|| need("a topic name"))?;
                let id = self
                    .resolve(name)
                    .ok_or_else(|| format!("not in a topic named {name}; /join it"))?;
                self.current = Some(id.clone());
                Ok(Action::Say(format!(
                    "now talking in {}",
                    self.topic_label(&id)
                )))
            }
            "leave" => send(self.on_topic("leave", arg)?),
            "msg" => {
                let (name, text) = rest
                    .split_once(' ')
                    .ok_or_else(|| need("a topic and a message"))?;
                send(self.on_topic("send", Some(name))?.with("body", text.trim()))
            }
            "create" => send(
                Packet::request("create").with(
                    "name",
                    arg.ok_or_else(|| need("a topic name"))?
                        .trim_start_matches('#'),
                ),
            ),
            "delete" => send(self.on_topic("delete", None)?),
            "history" => {
                let limit: u64 = arg
                    .map_or(Ok(20), str::parse)
                    .map_err(|_| need("a number"))?;
                send(self.on_topic("history", None)?.with("limit", limit))
            }
            "meta" => send(with_pair(Packet::request("meta"), arg)?),
            "tmeta" => send(with_pair(self.on_topic("meta", None)?, arg)?),
            "acl" => {
                let mut p = self.on_topic("acl", None)?;
                if let Some(rest) = arg {
                    let mut words = rest.split_whitespace();
                    let subject = words.next().unwrap_or_default();
                    let (mut grant, mut revoke) = (Vec::new(), Vec::new());
                    for w in words {
                        match (w.strip_prefix('+'), w.strip_prefix('-')) {
                            (Some(f), _) => grant.push(f.to_owned()),
                            (_, Some(f)) => revoke.push(f.to_owned()),
                            _ => return Err("flags are written +flag or -flag".into()),
                        }
                    }
                    p = p
                        .with("subject", subject)
                        .with("grant", json!(grant))
                        .with("revoke", json!(revoke));
                }
                send(p)
            }
            "find" => send(Packet::request("find").with("name", rest)),
            "users" => send(
                Packet::request("find")
                    .with("kind", "users")
                    .with("name", rest),
            ),
            "ticket" => send(match arg {
                Some(server) => Packet::request("ticket").with("server", server),
                None => Packet::request("ticket"),
            }),
            "keys" => send(Packet::request("key-list")),
            "whoami" => send(Packet::request("whoami")),
            "raw" => Packet::decode(rest.as_bytes(), 32)
                .map(Action::Send)
                .map_err(|e| e.to_string()),
            other => Err(format!("unknown command /{other}; /help lists them")),
        }
    }

    /// A packet from the server as a line for a person. `time` is `HH:MM:SS`.
    pub fn render(&mut self, p: &Packet, time: &str) -> String {
        self.observe(p);
        let topic = p
            .topic
            .as_deref()
            .map(|t| self.topic_label(t))
            .unwrap_or_default();
        let from = p.from.as_deref().unwrap_or("");
        let text = |ex: &Map<String, Value>| match ex.get("body").or_else(|| ex.get("data")) {
            Some(Value::String(s)) => s.clone(),
            _ => Value::Object(ex.clone()).to_string(),
        };
        let line = match p.op.as_str() {
            "send" => format!("{topic} <{from}> {}", text(&p.ex)),
            "join" => format!("{topic} * {from} joined"),
            "leave" => match p.ex_str("reason") {
                Some(r) => format!(
                    "{topic} * {from} left ({r} by {})",
                    p.ex_str("by").unwrap_or("?")
                ),
                None => format!("{topic} * {from} left"),
            },
            "delete" => format!("{topic} * deleted by {from}"),
            "error" => format!(
                "! {}: {}",
                p.ex_str("code").unwrap_or("error"),
                p.ex_str("message").unwrap_or("")
            ),
            "bye" => format!(
                "! server closing: {} ({})",
                p.ex_str("message").unwrap_or(""),
                p.ex_str("code").unwrap_or("")
            ),
            "ack" => {
                let mut ex = p.ex.clone();
                ex.remove("for");
                if ex.is_empty() {
                    "ok".to_owned()
                } else {
                    format!("ok {}", Value::Object(ex))
                }
            }
            "history" => {
                let mut out = Vec::new();
                for m in
                    p.ex.get("messages")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                {
                    // Each message at the time it was sent, not when the
                    // page arrived.
                    if let Ok(m) = serde_json::from_value::<RawMessage>(m.clone()) {
                        out.push(format!(
                            "[{}] {topic} <{}> {}",
                            clock(m.ts),
                            m.from,
                            text(&m.ex)
                        ));
                    }
                }
                if out.is_empty() {
                    format!("{topic} (no history)")
                } else {
                    return out.join("\n");
                }
            }
            _ => {
                let mut ex = p.ex.clone();
                ex.remove("for");
                let who = if from.is_empty() {
                    String::new()
                } else {
                    format!(" {from}")
                };
                format!("{topic} {}{who} {}", p.op, Value::Object(ex))
                    .trim_start()
                    .to_owned()
            }
        };
        format!("[{time}] {line}")
    }
}

/// `HH:MM:SS` (UTC) of a packet's `ts` (Unix ms).
pub fn clock(ts: Option<i64>) -> String {
    let secs = ts.unwrap_or_default().div_euclid(1000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

#[derive(serde::Deserialize)]
struct RawMessage {
    #[serde(default)]
    ts: Option<i64>,
    #[serde(default)]
    from: String,
    #[serde(default)]
    ex: Map<String, Value>,
}

/// `KEY VALUE` into `ex` (a JSON value if it parses as one, else a string).
fn with_pair(p: Packet, arg: Option<&str>) -> Result<Packet, String> {
    let Some(rest) = arg else {
        return Ok(p);
    };
    let (key, value) = rest.split_once(' ').ok_or("give a key and a value")?;
    let value = serde_json::from_str(value.trim()).unwrap_or_else(|_| Value::from(value.trim()));
    Ok(p.with(key, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(action: Action) -> Packet {
        match action {
            Action::Send(p) => p,
            other => panic!("expected a packet, got {other:?}"),
        }
    }

    #[test]
    fn commands_become_packets() {
        let mut s = State::default();
        assert!(s.parse("hello").is_err(), "no current topic yet");
        let p = packet(s.parse("/join #lobby").unwrap());
        assert_eq!((p.op.as_str(), p.ex_str("name")), ("join", Some("lobby")));
        let mut meta = Packet::server("meta");
        meta.topic = Some("t-1".into());
        meta = meta.with("name", "lobby");
        s.render(&meta, "12:00:00");
        assert_eq!(
            s.parse("/topic lobby").unwrap(),
            Action::Say("now talking in #lobby".into())
        );
        let p = packet(s.parse("hi there").unwrap());
        assert_eq!(
            (p.op.as_str(), p.topic.as_deref(), p.ex_str("body")),
            ("send", Some("t-1"), Some("hi there"))
        );
        let p = packet(s.parse("/acl bob +op -write").unwrap());
        assert_eq!(p.ex.get("grant"), Some(&json!(["op"])));
        assert_eq!(p.ex.get("revoke"), Some(&json!(["write"])));
        let p = packet(s.parse("/meta limit 5").unwrap());
        assert_eq!(p.ex.get("limit"), Some(&json!(5)));
        assert_eq!(
            s.parse("/login dan").unwrap(),
            Action::AskPassword {
                op: "auth",
                username: "dan".into()
            }
        );
        assert_eq!(s.parse("/quit").unwrap(), Action::Quit);
        assert!(s.parse("/frobnicate").is_err());
        let p = packet(s.parse("/raw {\"op\":\"ping\"}").unwrap());
        assert_eq!(p.op, "ping");
    }

    #[test]
    fn packets_render_with_topic_names() {
        let mut s = State::default();
        let mut meta = Packet::server("meta");
        meta.topic = Some("t-1".into());
        s.render(&meta.with("name", "lobby"), "12:00:00");
        let mut m = Packet::server("send")
            .with_from("dan")
            .with("body", "hello");
        m.topic = Some("t-1".into());
        assert_eq!(s.render(&m, "12:00:01"), "[12:00:01] #lobby <dan> hello");
        let e = Packet::server("error")
            .with("code", "acl/denied")
            .with("message", "no");
        assert_eq!(s.render(&e, "12:00:02"), "[12:00:02] ! acl/denied: no");
        // A history page: each message at its own time.
        let mut h = Packet::server("history").with(
            "messages",
            serde_json::json!([
                {"id": "a", "ts": 3_600_000 + 61_000, "op": "send", "from": "dan", "ex": {"body": "one"}},
                {"id": "b", "ts": 86_400_000 + 7_322_000, "op": "send", "from": "bob", "ex": {"body": "two"}},
            ]),
        );
        h.topic = m.topic.clone();
        assert_eq!(
            s.render(&h, "12:00:03"),
            "[01:01:01] #lobby <dan> one\n[02:02:02] #lobby <bob> two"
        );
    }
}
