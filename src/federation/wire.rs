//! The server-to-server redemption exchange (protocol.md §18): one JSON
//! line each way on a mutual-TLS connection with ALPN `10bit-fed/0.1`. No
//! I/O here.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The federation listener's ALPN protocol.
pub const ALPN: &[u8] = b"10bit-fed/0.1";

/// Longest packet either side reads, in bytes (a request holds a server
/// name and a ticket, an answer an account name).
pub const MAX_PACKET_BYTES: usize = 4096;

/// A federation packet: `{"op": …, "ex": {…}}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", content = "ex", deny_unknown_fields)]
pub enum Packet {
    /// Asking side: redeem `ticket` for a login on `server` (the asker).
    #[serde(rename = "fed.redeem")]
    Redeem {
        /// The asking server's name; must be the server its certificate
        /// belongs to.
        server: String,
        /// The ticket, as the client gave it.
        ticket: String,
    },
    /// Answering side: the account the ticket logs in (`user@home`), or
    /// `null` for a ticket unknown, used, expired or bound to another
    /// server (one answer for all four).
    #[serde(rename = "fed.answer")]
    Answer {
        /// `user@home`, or `null`.
        account: Option<String>,
    },
    /// Answering side: the request is refused; nothing was redeemed.
    #[serde(rename = "fed.error")]
    Error {
        /// A `fed/…` code.
        code: Code,
        /// Human text for the asking operator's log.
        message: String,
    },
}

// By hand: a request's ticket is never printed.
impl fmt::Debug for Packet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Packet::Redeem { server, .. } => f
                .debug_struct("Redeem")
                .field("server", server)
                .field("ticket", &"<redacted>")
                .finish(),
            Packet::Answer { account } => {
                f.debug_struct("Answer").field("account", account).finish()
            }
            Packet::Error { code, message } => f
                .debug_struct("Error")
                .field("code", code)
                .field("message", message)
                .finish(),
        }
    }
}

impl Packet {
    /// One line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        // Serializing these plain structs cannot fail.
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        line
    }

    /// Parses one line (without or with its newline).
    pub fn decode(line: &[u8]) -> Result<Packet, serde_json::Error> {
        serde_json::from_slice(line.strip_suffix(b"\n").unwrap_or(line))
    }
}

/// Federation codes: sent in `fed.error` by the answering side, and
/// logged by either side (protocol.md §18.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Code {
    /// The other side's certificate is not the one configured for it.
    #[serde(rename = "fed/bad-certificate")]
    BadCertificate,
    /// The request's `server` is not the server its certificate belongs to.
    #[serde(rename = "fed/server-mismatch")]
    ServerMismatch,
    /// Not a federation packet, or not the one expected.
    #[serde(rename = "fed/malformed")]
    Malformed,
    /// A packet longer than the limit.
    #[serde(rename = "fed/too-large")]
    TooLarge,
    /// The asking server asks more often than `federation.requests_per_minute`.
    #[serde(rename = "fed/rate-limited")]
    RateLimited,
    /// The node of the home server that issued the ticket cannot be reached.
    #[serde(rename = "fed/unavailable")]
    Unavailable,
    /// The home server's store failed.
    #[serde(rename = "fed/internal")]
    Internal,
    /// The home server could not be connected to.
    #[serde(rename = "fed/unreachable")]
    Unreachable,
    /// No answer within `federation.timeout_ms`.
    #[serde(rename = "fed/timeout")]
    Timeout,
    /// The answer names an account of another server, or is not one.
    #[serde(rename = "fed/bad-answer")]
    BadAnswer,
}

impl Code {
    /// Every code, in the order protocol.md lists them.
    pub const ALL: [Code; 10] = [
        Code::BadCertificate,
        Code::ServerMismatch,
        Code::Malformed,
        Code::TooLarge,
        Code::RateLimited,
        Code::Unavailable,
        Code::Internal,
        Code::Unreachable,
        Code::Timeout,
        Code::BadAnswer,
    ];

    /// The wire form, `fed/…`.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BadCertificate => "fed/bad-certificate",
            Code::ServerMismatch => "fed/server-mismatch",
            Code::Malformed => "fed/malformed",
            Code::TooLarge => "fed/too-large",
            Code::RateLimited => "fed/rate-limited",
            Code::Unavailable => "fed/unavailable",
            Code::Internal => "fed/internal",
            Code::Unreachable => "fed/unreachable",
            Code::Timeout => "fed/timeout",
            Code::BadAnswer => "fed/bad-answer",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The user part of an answer's `account`, when it names an account of
/// `home` (`user@home`, case-insensitive, or a bare `user`): a name that a
/// server could hold (letters, digits, `_ - . ~`, starting with a letter,
/// at most 64 bytes; `~` for a name clash).
pub fn account_of<'a>(account: &'a str, home: &str) -> Option<&'a str> {
    let user = match account.split_once('@') {
        Some((user, server)) if server.eq_ignore_ascii_case(home) => user,
        Some(_) => return None,
        None => account,
    };
    is_remote_user(user).then_some(user)
}

/// Whether `user` is a name another server may give its account (18.3): a
/// letter, then letters, digits, `_`, `-`, `.` or `~` (a clash's suffix), at
/// most 64 bytes. Wider than a local name, so ACL subjects `user@server`
/// are checked by this rule too.
pub fn is_remote_user(user: &str) -> bool {
    let mut bytes = user.bytes();
    let Some(first) = bytes.next() else {
        return false;
    };
    first.is_ascii_alphabetic()
        && user.len() <= 64
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'~'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_round_trip_and_hide_the_ticket() {
        let p = Packet::Redeem {
            server: "second.example".into(),
            ticket: "SECRETSECRET".into(),
        };
        let line = p.to_line();
        assert_eq!(
            String::from_utf8(line.clone()).unwrap(),
            "{\"op\":\"fed.redeem\",\"ex\":{\"server\":\"second.example\",\"ticket\":\"SECRETSECRET\"}}\n"
        );
        assert_eq!(Packet::decode(&line).unwrap(), p);
        assert!(!format!("{p:?}").contains("SECRET"));
        let e =
            Packet::decode(br#"{"op":"fed.error","ex":{"code":"fed/rate-limited","message":"x"}}"#)
                .unwrap();
        assert!(matches!(
            e,
            Packet::Error {
                code: Code::RateLimited,
                ..
            }
        ));
        assert!(Packet::decode(br#"{"op":"fed.answer","ex":{"account":null,"x":1}}"#).is_err());
        assert!(Packet::decode(br#"{"op":"fed.nope","ex":{}}"#).is_err());
        for c in Code::ALL {
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.as_str()));
        }
    }

    #[test]
    fn answers_must_name_an_account_of_the_server_asked() {
        assert_eq!(
            account_of("dan@First.Example", "first.example"),
            Some("dan")
        );
        assert_eq!(account_of("dan", "first.example"), Some("dan"));
        assert_eq!(
            account_of("dan~a1b2c3", "first.example"),
            Some("dan~a1b2c3")
        );
        assert_eq!(account_of("dan@third.example", "first.example"), None);
        assert_eq!(account_of("dan@first.example@x", "first.example"), None);
        assert_eq!(account_of("@first.example", "first.example"), None);
        assert_eq!(account_of("", "first.example"), None);
        assert_eq!(account_of("1dan", "first.example"), None);
        assert_eq!(account_of("d an", "first.example"), None);
    }
}
