//! Constructors for the packets the server sends on its own account:
//! `welcome`, `ack`, `error`, `pong`, `ping` and `bye`.
//!
//! A reply to a request carries `ex.for` with the request's `id` when it had one.

use serde_json::{Value, json};

use super::code::ErrorCode;

use super::id::UuidText;
use super::packet::{Packet, write_str, write_uuid};

/// Every op the server sends, as `protocol.md` documents them.
pub const SERVER_OPS: [&str; 25] = [
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
    "mark",
    "edit",
    "redact",
    "search",
    "join-request",
    "admit",
    "presence",
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

/// Appends the `ack` of a `send` (only a `send` with an `id` has one):
/// `ex` carries the relayed message's `id` and `ts`. The same packet as
/// `ack(Some(for_id)).with("id", …).with("ts", …)`, written in one pass:
/// `ack_id` and `now` are the ack's own id and ts.
pub fn write_send_ack(
    buf: &mut Vec<u8>,
    for_id: &str,
    now: i64,
    ack_id: &UuidText,
    message_id: &UuidText,
    message_ts: i64,
) {
    let mut number = itoa::Buffer::new();
    buf.extend_from_slice(b"{\"id\":");
    write_uuid(buf, ack_id);
    buf.extend_from_slice(b",\"ts\":");
    buf.extend_from_slice(number.format(now).as_bytes());
    buf.extend_from_slice(b",\"op\":\"ack\",\"ex\":{\"for\":");
    write_str(buf, for_id);
    buf.extend_from_slice(b",\"id\":");
    write_uuid(buf, message_id);
    buf.extend_from_slice(b",\"ts\":");
    buf.extend_from_slice(number.format(message_ts).as_bytes());
    buf.extend_from_slice(b"}}\n");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_ack_is_the_ack_packet() {
        for for_id in ["r\"1", "r1"] {
            let mut line = Vec::new();
            let (own, message) = (crate::proto::id::new_uuid(), crate::proto::id::new_uuid());
            let texts = (UuidText::new(own), UuidText::new(message));
            write_send_ack(&mut line, for_id, 7, &texts.0, &texts.1, 42);
            let got = Packet::decode(line.strip_suffix(b"\n").unwrap(), 8).unwrap();
            let mut want = ack(Some(for_id))
                .with("id", message.to_string())
                .with("ts", 42);
            want.id = Some(own.to_string());
            want.ts = Some(7);
            assert_eq!(got, want);
            // Field order too, as a packet would be written.
            assert_eq!(line, want.to_line());
            assert_eq!(got.id.as_deref().map(str::len), Some(36));
        }
    }
}
