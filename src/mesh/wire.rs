//! The mesh link protocol, no I/O: one JSON object per line, `op` naming the
//! packet and `ex` carrying its fields, like client packets. protocol.md §
//! "Mesh links" is the normative description; its examples are decoded by a
//! test with [`decode`].

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::store::{Event, Incoming, RawEvent, VersionVector};

/// The link protocol version this build speaks.
pub const PROTO: u32 = 1;

/// A mesh packet.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", content = "ex", deny_unknown_fields)]
pub enum Packet {
    /// First packet each way.
    #[serde(rename = "mesh.hello")]
    Hello(Hello),
    /// One event of the store's log.
    #[serde(rename = "mesh.event")]
    Event(WireEvent),
    /// What the sender holds; sent every keepalive interval.
    #[serde(rename = "mesh.ack")]
    Ack(Ack),
    /// A packet for one node, flooded until it gets there.
    #[serde(rename = "mesh.route")]
    Route(Routed),
    /// Messages of a topic that keeps no history, flooded to every node.
    #[serde(rename = "mesh.relay")]
    Relay(Relay),
    /// Who is connected to a node, flooded to every node.
    #[serde(rename = "mesh.presence")]
    Presence(Presence),
    /// The last packet before the sender closes the link.
    #[serde(rename = "mesh.error")]
    Error(Refusal),
}

/// `mesh.hello`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// The server name both nodes must share.
    pub server: String,
    /// The sender's node name (its certificate must say the same).
    pub node: String,
    /// The sender's store incarnation.
    pub incarnation: String,
    /// Link protocol version.
    pub proto: u32,
    /// What the sender holds of each origin.
    pub vv: VersionVector,
    /// The sender's wall clock, Unix ms.
    pub now_ms: i64,
}

/// `mesh.event`: an event and the seq before it in the sender's log.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireEvent {
    /// Origin node.
    pub o: String,
    /// Origin incarnation.
    pub i: String,
    /// Seq in the origin's log.
    pub s: u64,
    /// The seq before it in the sender's log (0 for the first).
    pub p: u64,
    /// Hybrid logical clock.
    pub h: u64,
    /// The change, as the log holds it.
    pub c: Box<serde_json::value::RawValue>,
}

impl WireEvent {
    /// The event for the store: its change decoded, and kept as it came.
    /// Numbers past `i64::MAX` are refused: the store keeps them as SQLite
    /// integers, and a clock read back negative would make every later
    /// change of this node lose to older ones (and the peers it reaches).
    pub fn into_incoming(self) -> Result<Incoming, String> {
        const MAX: u64 = i64::MAX as u64;
        if self.s > MAX || self.p > MAX || self.h > MAX {
            return Err(format!(
                "s, p and h are at most {MAX} (got {}, {}, {})",
                self.s, self.p, self.h
            ));
        }
        let change = serde_json::from_str(self.c.get()).map_err(|e| format!("bad change: {e}"))?;
        Ok(Incoming {
            event: Event {
                node: self.o,
                incarnation: self.i,
                seq: self.s,
                hlc: self.h,
                change,
            },
            prev: self.p,
            body: self.c.get().to_owned(),
        })
    }
}

/// Appends the `mesh.event` line of `event`, following `prev`, without
/// decoding its change.
pub fn write_event(out: &mut Vec<u8>, event: &RawEvent, prev: u64) {
    out.extend_from_slice(b"{\"op\":\"mesh.event\",\"ex\":{\"o\":");
    let _ = serde_json::to_writer(&mut *out, &event.node);
    out.extend_from_slice(b",\"i\":");
    let _ = serde_json::to_writer(&mut *out, &event.incarnation);
    for (key, n) in [
        (&b",\"s\":"[..], event.seq),
        (b",\"p\":", prev),
        (b",\"h\":", event.hlc),
    ] {
        out.extend_from_slice(key);
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    }
    out.extend_from_slice(b",\"c\":");
    out.extend_from_slice(event.body.as_bytes());
    out.extend_from_slice(b"}}\n");
}

/// `mesh.ack`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    /// What the sender holds of each origin.
    pub vv: VersionVector,
}

/// `mesh.relay`: relayed `send` packets of one topic that keeps no
/// history, exactly as its members receive them; flooded to every node and
/// taken once per message id.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Relay {
    /// The node that relayed them first, and its run (`node/boot`).
    pub o: String,
    /// Numbers the origin's relays: receivers put them in this order.
    pub s: u64,
    /// The topic.
    pub topic: Uuid,
    /// The relayed packets, as sent to members.
    pub packets: Vec<Box<serde_json::value::RawValue>>,
}

/// `mesh.presence`: the accounts that came to or left origin `o` since its
/// packet `s - 1`, or (`full`) all of its accounts as of `s`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Presence {
    /// The node whose connections these are.
    pub o: String,
    /// Its run: a later run's list replaces an earlier one's.
    pub b: String,
    /// Numbers the origin's presence packets, per run.
    pub s: u64,
    /// `on` is the whole list, not a change.
    #[serde(default)]
    pub full: bool,
    /// Accounts connected (now, or since the last packet).
    #[serde(default)]
    pub on: Vec<Uuid>,
    /// Accounts no longer connected since the last packet.
    #[serde(default)]
    pub off: Vec<Uuid>,
}

/// The `mesh.relay` line for relayed packets `lines` (each ending in a
/// newline) of `topic`, built without parsing them.
pub fn relay_line(origin: &str, seq: u64, topic: &Uuid, lines: &[u8]) -> Vec<u8> {
    let body = lines.strip_suffix(b"\n").unwrap_or(lines);
    let mut out = Vec::with_capacity(body.len() + 160);
    out.extend_from_slice(b"{\"op\":\"mesh.relay\",\"ex\":{\"o\":");
    let _ = serde_json::to_writer(&mut out, origin);
    out.extend_from_slice(b",\"s\":");
    out.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
    out.extend_from_slice(b",\"topic\":\"");
    out.extend_from_slice(
        topic
            .hyphenated()
            .encode_lower(&mut Uuid::encode_buffer())
            .as_bytes(),
    );
    out.extend_from_slice(b"\",\"packets\":[");
    for (i, line) in body.split(|b| *b == b'\n').enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(line);
    }
    out.extend_from_slice(b"]}}\n");
    out
}

/// The `to` of a routed packet for every node: each takes it and passes it
/// on.
pub const BROADCAST: &str = "*";

/// `mesh.route`: flooded over every link but the one it came by, dropped
/// where seen before, until it reaches `to` ([`BROADCAST`]: every node).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Routed {
    /// Unique per packet (de-duplication).
    pub id: Uuid,
    /// The node that sent it.
    pub from: String,
    /// The node it is for.
    pub to: String,
    /// Links crossed so far.
    pub hops: u8,
    /// What it carries.
    pub body: RouteBody,
}

/// What a routed packet carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RouteBody {
    /// Redeem a ticket this node issued, for a login at `from`.
    TicketRedeem {
        /// Matches the answer to the question.
        request: Uuid,
        /// The ticket.
        ticket: String,
        /// For a login on another server (federation): that server, the
        /// only one a ticket may then be bound to. Absent: a login on this
        /// server.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        abroad: Option<String>,
    },
    /// The issuer's answer: the account logged in, or none (unknown, used,
    /// expired, bound elsewhere: one answer for all, as to clients).
    TicketAnswer {
        /// The question's `request`.
        request: Uuid,
        /// The account, when the ticket was good.
        account: Option<Uuid>,
    },
    /// A join request made at `from` (protocol.md 11.22), for every node.
    JoinRequest {
        /// The request's id.
        request: Uuid,
        /// The topic.
        topic: Uuid,
        /// The requesting account.
        account: Uuid,
        /// Its name, as shown.
        name: String,
        /// Words for the admitters.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
        /// Key material for the admitters.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        /// Unix ms at which it expires (every node expires it itself).
        expires: i64,
    },
    /// How a join request ended at `from`, for every node.
    JoinEnded {
        /// The request's id.
        request: Uuid,
        /// The topic.
        topic: Uuid,
        /// The requesting account.
        account: Uuid,
        /// The request's expiry (how long to remember that it ended).
        expires: i64,
        /// How it ended.
        result: JoinResult,
        /// The admitter, or the requester withdrawing.
        by: String,
        /// The admitter's words, for the requester.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
        /// The admitter's key material, for the requester.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
}

/// How a join request ended, in [`RouteBody::JoinEnded`] (expiry is never
/// sent: every node expires requests by their `expires`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JoinResult {
    /// Admitted: the membership is committed at `from`.
    Admitted,
    /// Declined.
    Declined,
    /// Withdrawn by the requester.
    Withdrawn,
}

/// `mesh.error`: why the sender closes the link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refusal {
    /// A stable `mesh/...` code.
    pub code: String,
    /// Human text.
    pub message: String,
}

/// Why a link was refused or closed: stable codes, in log lines and in
/// `mesh.error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// The peer serves another server name.
    ServerMismatch,
    /// The peer's hello names another node than its certificate.
    NodeMismatch,
    /// The peer speaks another link protocol version.
    Proto,
    /// The peer's clock is too far from ours.
    ClockSkew,
    /// A packet is not valid JSON or not a mesh packet.
    Malformed,
    /// A packet is longer than `mesh.max_packet_bytes`.
    TooLarge,
    /// An event claims this node's own origin.
    OwnOrigin,
    /// An event does not follow what this node holds of its origin.
    Gap,
    /// Nothing was heard for `mesh.idle_timeout_ms`.
    Idle,
    /// Another link to the same node is kept instead.
    Duplicate,
    /// The certificate is not one of a configured peer.
    BadCertificate,
    /// The node is shutting down.
    Shutdown,
    /// The store failed.
    Internal,
}

impl Code {
    /// Every code, for the documentation test.
    pub const ALL: &[Code] = &[
        Code::ServerMismatch,
        Code::NodeMismatch,
        Code::Proto,
        Code::ClockSkew,
        Code::Malformed,
        Code::TooLarge,
        Code::OwnOrigin,
        Code::Gap,
        Code::Idle,
        Code::Duplicate,
        Code::BadCertificate,
        Code::Shutdown,
        Code::Internal,
    ];

    /// The wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::ServerMismatch => "mesh/server-mismatch",
            Code::NodeMismatch => "mesh/node-mismatch",
            Code::Proto => "mesh/proto",
            Code::ClockSkew => "mesh/clock-skew",
            Code::Malformed => "mesh/malformed",
            Code::TooLarge => "mesh/too-large",
            Code::OwnOrigin => "mesh/own-origin",
            Code::Gap => "mesh/gap",
            Code::Idle => "mesh/idle",
            Code::Duplicate => "mesh/duplicate-link",
            Code::BadCertificate => "mesh/bad-certificate",
            Code::Shutdown => "mesh/shutdown",
            Code::Internal => "mesh/internal",
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Decodes one line.
pub fn decode(line: &[u8]) -> Result<Packet, serde_json::Error> {
    serde_json::from_slice(line)
}

/// Encodes a packet as one line, newline included.
pub fn encode(packet: &Packet, out: &mut Vec<u8>) {
    // Serializing these types to a Vec cannot fail: every map key is a string.
    let _ = serde_json::to_writer(&mut *out, packet);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_round_trip_and_unknown_fields_are_refused() {
        let p = Packet::Ack(Ack {
            vv: VersionVector(std::iter::once(("n1/ab".to_owned(), 3)).collect()),
        });
        let mut line = Vec::new();
        encode(&p, &mut line);
        assert_eq!(
            line,
            b"{\"op\":\"mesh.ack\",\"ex\":{\"vv\":{\"n1/ab\":3}}}\n"
        );
        let mut again = Vec::new();
        encode(&decode(line.trim_ascii_end()).unwrap(), &mut again);
        assert_eq!(again, line);
        assert!(decode(br#"{"op":"mesh.ack","ex":{"vv":{},"x":1}}"#).is_err());
        assert!(decode(br#"{"op":"mesh.nope","ex":{}}"#).is_err());
        assert!(decode(br#"{"op":"mesh.ack","ex":{"vv":{"a/b":-1}}}"#).is_err());
    }

    #[test]
    fn event_lines_carry_the_change_as_stored() {
        let raw = RawEvent {
            node: "n\"1".into(),
            incarnation: "ab".into(),
            seq: 7,
            hlc: 1 << 40,
            body: r#"{"kind":"x","writes":[{"e":"server","f":"meta:n","v":1.50}]}"#.into(),
        };
        let mut line = Vec::new();
        write_event(&mut line, &raw, 5);
        let Packet::Event(e) = decode(line.trim_ascii_end()).unwrap() else {
            panic!("not an event");
        };
        let inc = e.into_incoming().unwrap();
        assert_eq!(
            (
                inc.event.node.as_str(),
                inc.event.seq,
                inc.prev,
                inc.event.hlc
            ),
            ("n\"1", 7, 5, 1 << 40)
        );
        assert_eq!(inc.body, raw.body, "stored as it came, byte for byte");
        assert_eq!(inc.event.change.kind, "x");
    }

    #[test]
    fn numbers_past_what_the_store_holds_are_refused() {
        for (s, p, h) in [(1u64 << 63, 0, 1), (1, 1 << 63, 1), (1, 0, u64::MAX)] {
            let raw = RawEvent {
                node: "n1".into(),
                incarnation: "ab".into(),
                seq: s,
                hlc: h,
                body: r#"{"kind":"x","writes":[]}"#.into(),
            };
            let mut line = Vec::new();
            write_event(&mut line, &raw, p);
            let Packet::Event(e) = decode(line.trim_ascii_end()).unwrap() else {
                panic!("not an event");
            };
            let why = e.into_incoming().unwrap_err();
            assert!(why.contains("at most"), "{why}");
        }
    }

    #[test]
    fn relay_lines_carry_packets_as_sent() {
        let topic = Uuid::now_v7();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let lines = format!(
            "{{\"id\":\"{a}\",\"ts\":1,\"op\":\"send\",\"ex\":{{\"n\":1.50}}}}\n{{\"ts\":2,\"id\":\"{b}\",\"op\":\"send\",\"ex\":{{}}}}\n"
        );
        let line = relay_line("n1/b00t", 7, &topic, lines.as_bytes());
        let Packet::Relay(r) = decode(line.trim_ascii_end()).unwrap() else {
            panic!("not a relay");
        };
        assert_eq!((r.o.as_str(), r.s, r.topic), ("n1/b00t", 7, topic));
        let got: Vec<&str> = r.packets.iter().map(|p| p.get()).collect();
        let want: Vec<&str> = lines.trim_end().split('\n').collect();
        assert_eq!(got, want, "packets cross byte for byte");
    }
}
