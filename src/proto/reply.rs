//! Constructors for the packets the server sends on its own account:
//! `welcome`, `ack`, `error`, `pong`, `ping` and `bye`.
//!
//! A reply to a request carries `ex.for` with the request's `id` when it had one.

use serde_json::{Value, json};

use super::code::ErrorCode;
use super::packet::Packet;

/// Every op the server sends, as `protocol.md` documents them.
pub const SERVER_OPS: [&str; 18] = [
    "welcome",
    "ack",
    "error",
    "ping",
    "pong",
    "bye",
    "meta",
    "ticket",
    "challenge",
    "keys",
    "export",
    "send",
    "join",
    "leave",
    "acl",
    "delete",
    "history",
    "found",
];

/// The software string in `welcome`.
pub const SOFTWARE: &str = concat!("tenthbit/", env!("CARGO_PKG_VERSION"));

/// `welcome`, the first packet on every connection.
/// `protocol` is the negotiated ALPN name, so a client (or a person at
/// `openssl s_client`) can see whether the session is compressed.
pub fn welcome(server: &str, methods: &[String], protocol: &str) -> Packet {
    Packet::server("welcome")
        .with_from(format!("@{server}"))
        .with("server", server)
        .with("software", SOFTWARE)
        .with("protocol", protocol)
        .with("auth", json!({ "methods": methods }))
}

fn answer(op: &str, for_id: Option<&str>) -> Packet {
    Packet::server(op).answering(for_id)
}

/// `ack` for a request.
pub fn ack(for_id: Option<&str>) -> Packet {
    answer("ack", for_id)
}

/// `error` for a request (or, with no `for`, for a line that had no id).
pub fn error(for_id: Option<&str>, code: ErrorCode, message: impl Into<String>) -> Packet {
    answer("error", for_id)
        .with("code", code.as_str())
        .with("message", Value::String(message.into()))
}

/// `pong`, the answer to `ping`.
pub fn pong(for_id: Option<&str>) -> Packet {
    answer("pong", for_id)
}

/// `ping` from the server: a keepalive probe the client answers with `pong`.
pub fn ping() -> Packet {
    Packet::server("ping")
}

/// `bye`, the last packet before the server closes a connection.
pub fn bye(code: ErrorCode, message: impl Into<String>) -> Packet {
    Packet::server("bye")
        .with("code", code.as_str())
        .with("message", Value::String(message.into()))
}
