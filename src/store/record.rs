//! A kept message's record in the message log, as a session appends it.
//!
//! | bytes | field |
//! |---|---|
//! | 1 | [`TAG`] |
//! | 16 | topic (a UUID's bytes) |
//! | 16 | the message's id |
//! | 16 | sender |
//! | 8 | `ts`, little-endian (0: the record's clock is its time) |
//! | rest | `ex`, JSON text |
//!
//! Builds before this one wrote the change's JSON text instead
//! (`log::MessageParts`): about 130 bytes more a message, with three UUIDs
//! as 36-character strings, `"kind":"message","writes":[]` and the keys,
//! all of it copied into the page cache, checksummed and synced by the log
//! thread, and escaped by the session that appended it (bench/README.md,
//! twenty-fifth round). Every reader here still reads such text: a text
//! record starts with `{`, never with [`TAG`]. Peers and the `events`
//! table get the JSON text ([`text`]), as they always have.

use std::borrow::Cow;

use uuid::Uuid;

use super::Error;
use super::log::{self, MessageParts};
use crate::change::{Change, ExJson, Message};
use crate::proto::id::UuidText;

/// A binary record's first byte (a JSON text starts with `{`).
pub const TAG: u8 = 0x01;

/// Bytes before a binary record's `ex`.
pub const HEAD: usize = 1 + 16 * 3 + 8;

/// A kept message as its binary record holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kept<'a> {
    /// The topic.
    pub topic: Uuid,
    /// The message's id (a session mints a UUID).
    pub id: Uuid,
    /// The sender.
    pub sender: Uuid,
    /// Its time, where it is not the record's clock (0 when it is).
    pub ts: i64,
    /// Its `ex`, JSON text.
    pub ex: &'a str,
}

impl<'a> Kept<'a> {
    /// Appends the record's body to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(HEAD + self.ex.len());
        out.push(TAG);
        out.extend_from_slice(self.topic.as_bytes());
        out.extend_from_slice(self.id.as_bytes());
        out.extend_from_slice(self.sender.as_bytes());
        out.extend_from_slice(&self.ts.to_le_bytes());
        out.extend_from_slice(self.ex.as_bytes());
    }

    /// The record's body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEAD + self.ex.len());
        self.encode_into(&mut out);
        out
    }

    /// A binary record's fields; `None` for any other body (text, or too
    /// short, or an `ex` that is not UTF-8).
    pub fn parse(body: &'a [u8]) -> Option<Self> {
        let (topic, id, rest) = head(body)?;
        let (sender, rest) = rest.split_first_chunk::<16>()?;
        let (ts, ex) = rest.split_first_chunk::<8>()?;
        Some(Self {
            topic,
            id,
            sender: Uuid::from_bytes(*sender),
            ts: i64::from_le_bytes(*ts),
            ex: std::str::from_utf8(ex).ok()?,
        })
    }

    /// The change the record stands for, as its JSON text decodes.
    pub fn change(&self) -> Result<Change, Error> {
        let ex =
            ExJson::from_text(self.ex.to_owned()).map_err(|e| Error::Corrupt(e.to_string()))?;
        Ok(Change::message(Message {
            topic: self.topic,
            id: UuidText::new(self.id).as_str().to_owned(),
            ts: self.ts,
            sender: self.sender,
            ex,
        }))
    }

    /// The change's JSON text, as a text record held it.
    pub fn text(&self) -> String {
        let id = UuidText::new(self.id);
        let parts = MessageParts {
            kind: Change::MESSAGE,
            topic: &UuidText::new(self.topic),
            id: id.as_str(),
            ts: self.ts,
            sender: &UuidText::new(self.sender),
            ex: self.ex,
        };
        // Every piece is text, so this only checks.
        String::from_utf8(parts.encode())
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
}

/// A binary record's topic, id and what follows them.
fn head(body: &[u8]) -> Option<(Uuid, Uuid, &[u8])> {
    let rest = body.strip_prefix(&[TAG])?;
    let (topic, rest) = rest.split_first_chunk::<16>()?;
    let (id, rest) = rest.split_first_chunk::<16>()?;
    Some((Uuid::from_bytes(*topic), Uuid::from_bytes(*id), rest))
}

/// A kept message's topic and id, read at their places (binary) or by
/// [`log::message_topic_and_id`] (text): what the message log's index
/// needs of a record. The `ex` is not read: the record's checksum vouches
/// for it, and the session checked it before it appended it.
pub fn topic_and_id(body: &[u8]) -> Option<(Uuid, Uuid)> {
    if body.first() != Some(&TAG) {
        return log::message_topic_and_id(body);
    }
    let (topic, id, _) = head(body).filter(|_| body.len() >= HEAD)?;
    Some((topic, id))
}

/// A record's body as the JSON text of its change: a binary record's
/// [`Kept::text`], or a text record as it is.
pub fn text(body: &[u8]) -> Result<Cow<'_, str>, Error> {
    if let Some(kept) = Kept::parse(body) {
        return Ok(Cow::Owned(kept.text()));
    }
    if body.first() == Some(&TAG) {
        return Err(damaged());
    }
    std::str::from_utf8(body)
        .map(Cow::Borrowed)
        .map_err(|e| Error::Corrupt(e.to_string()))
}

/// A record's body as the change it encodes (binary, or text in the
/// layout [`log::decode_message`] reads, or any text serde reads).
pub fn change(body: &[u8]) -> Result<Change, Error> {
    if let Some(kept) = Kept::parse(body) {
        return kept.change();
    }
    let text = text(body)?;
    match log::decode_message(&text) {
        Some(change) => Ok(change),
        None => serde_json::from_str(&text).map_err(|e| Error::Corrupt(e.to_string())),
    }
}

/// `body` with its message's `ex` emptied at the same length (`{`, spaces,
/// `}`): a redaction rewrites the record in place. `None` for a text record
/// in a layout [`log::blank_ex`] does not read.
pub fn blank_ex(body: &[u8]) -> Option<Vec<u8>> {
    if let Some(kept) = Kept::parse(body) {
        let mut out = body.get(..body.len().checked_sub(kept.ex.len())?)?.to_vec();
        out.extend_from_slice(log::blank_object(kept.ex.len())?.as_bytes());
        return Some(out);
    }
    log::blank_ex(std::str::from_utf8(body).ok()?).map(String::into_bytes)
}

fn damaged() -> Error {
    Error::Corrupt("a kept message's binary record is cut short or not UTF-8".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any bytes (a damaged record whose CRC still matched, or a
        /// foreign file): an answer or an error, never a panic.
        #[test]
        fn any_body_reads_without_panicking(body in proptest::collection::vec(any::<u8>(), 0..200),
                                            tag in any::<bool>()) {
            let mut body = body;
            if tag {
                body.insert(0, TAG);
            }
            let _ = Kept::parse(&body);
            let _ = topic_and_id(&body);
            let _ = text(&body);
            let _ = change(&body);
            if let Some(blank) = blank_ex(&body) {
                prop_assert_eq!(blank.len(), body.len());
            }
        }

        /// Every message a session can append reads back as the change its
        /// text gives, whatever its `ex` and `ts`.
        #[test]
        fn a_kept_message_reads_back_as_its_text(topic in any::<u128>(), id in any::<u128>(),
                                                 sender in any::<u128>(), ts in any::<i64>(),
                                                 body in any::<String>()) {
            let ex = serde_json::json!({ "body": body }).to_string();
            let kept = Kept {
                topic: Uuid::from_u128(topic),
                id: Uuid::from_u128(id),
                sender: Uuid::from_u128(sender),
                ts,
                ex: &ex,
            };
            let record = kept.encode();
            prop_assert_eq!(Kept::parse(&record), Some(kept));
            let text = text(&record).unwrap().into_owned();
            let serde: Change = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(change(&record).unwrap(), serde);
            prop_assert_eq!(topic_and_id(&record), Some((kept.topic, kept.id)));
        }
    }

    fn kept(ex: &str) -> Kept<'_> {
        Kept {
            topic: Uuid::from_u128(1),
            id: Uuid::from_u128(2),
            sender: Uuid::from_u128(3),
            ts: -7,
            ex,
        }
    }

    #[test]
    fn a_binary_record_reads_back_as_its_text_would() {
        let ex = r#"{"body":"hé \"quoted\""}"#;
        let body = kept(ex).encode();
        assert_eq!(body.len(), HEAD + ex.len());
        assert_eq!(Kept::parse(&body), Some(kept(ex)));
        let text = text(&body).unwrap().into_owned();
        assert_eq!(change(&body).unwrap(), change(text.as_bytes()).unwrap());
        assert_eq!(
            serde_json::from_str::<Change>(&text).unwrap(),
            change(&body).unwrap()
        );
        assert_eq!(
            topic_and_id(&body),
            Some((Uuid::from_u128(1), Uuid::from_u128(2)))
        );
    }

    #[test]
    fn a_blanked_binary_record_keeps_its_length_and_reads_as_empty() {
        let body = kept(r#"{"body":"secret"}"#).encode();
        let blank = blank_ex(&body).unwrap();
        assert_eq!(blank.len(), body.len());
        let back = Kept::parse(&blank).unwrap();
        assert_eq!(back.ex, format!("{{{}}}", " ".repeat(15)));
        assert!(change(&blank).unwrap().message.unwrap().ex.is_empty());
        assert!(!String::from_utf8_lossy(&blank).contains("secret"));
    }

    #[test]
    fn a_cut_binary_record_is_damage_not_text() {
        let body = kept("{}").encode();
        for cut in [1, 17, 33, 49, HEAD - 1] {
            let short = &body[..cut];
            assert_eq!(Kept::parse(short), None, "cut at {cut}");
            assert!(change(short).is_err(), "cut at {cut}");
            assert!(text(short).is_err(), "cut at {cut}");
        }
        assert_eq!(topic_and_id(&body[..HEAD - 1]), None);
        let mut bad = body.clone();
        bad.push(0xff);
        assert_eq!(Kept::parse(&bad), None);
        assert!(change(&bad).is_err());
    }

    #[test]
    fn text_records_of_earlier_builds_read_as_before() {
        let topic = Uuid::from_u128(1);
        let id = UuidText::new(Uuid::from_u128(2));
        let body = log::text_message(topic, Uuid::from_u128(3), id.as_str(), "old");
        assert_eq!(body.first(), Some(&b'{'));
        assert_eq!(topic_and_id(&body), Some((topic, Uuid::from_u128(2))));
        let change = change(&body).unwrap();
        assert_eq!(change.message.as_ref().unwrap().id, id.as_str());
        assert_eq!(
            text(&body).unwrap(),
            String::from_utf8(body.clone()).unwrap()
        );
        let blank = blank_ex(&body).unwrap();
        assert_eq!(blank.len(), body.len());
        assert!(!String::from_utf8(blank).unwrap().contains("old"));
    }
}
