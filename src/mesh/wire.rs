//! The mesh link protocol, no I/O: one JSON object per line, `op` naming the
//! packet and `ex` carrying its fields, like client packets. protocol.md §
//! "Mesh links" is the normative description; its examples are decoded by a
//! test with [`decode`].

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::change::Change;
use crate::store::{Event, VersionVector};

/// The link protocol version this build speaks.
pub const PROTO: u32 = 1;

/// A mesh packet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// The change.
    pub c: Change,
}

impl WireEvent {
    /// The wire form of `event`, following `prev`.
    pub fn new(event: &Event, prev: u64) -> Self {
        Self {
            o: event.node.clone(),
            i: event.incarnation.clone(),
            s: event.seq,
            p: prev,
            h: event.hlc,
            c: event.change.clone(),
        }
    }

    /// The event, and the seq before it.
    pub fn into_event(self) -> (Event, u64) {
        (
            Event {
                node: self.o,
                incarnation: self.i,
                seq: self.s,
                hlc: self.h,
                change: self.c,
            },
            self.p,
        )
    }
}

/// `mesh.ack`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    /// What the sender holds of each origin.
    pub vv: VersionVector,
}

/// `mesh.route`: flooded over every link but the one it came by, dropped
/// where seen before, until it reaches `to`.
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
    },
    /// The issuer's answer: the account logged in, or none (unknown, used,
    /// expired, bound elsewhere: one answer for all, as to clients).
    TicketAnswer {
        /// The question's `request`.
        request: Uuid,
        /// The account, when the ticket was good.
        account: Option<Uuid>,
    },
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
        assert_eq!(decode(line.trim_ascii_end()).unwrap(), p);
        assert!(decode(br#"{"op":"mesh.ack","ex":{"vv":{},"x":1}}"#).is_err());
        assert!(decode(br#"{"op":"mesh.nope","ex":{}}"#).is_err());
        assert!(decode(br#"{"op":"mesh.ack","ex":{"vv":{"a/b":-1}}}"#).is_err());
    }
}
