//! The plain `send`: one pass over the line that nearly every packet is.
//!
//! A message with no escapes and no control characters anywhere is read,
//! and checked as strictly as [`Packet::decode_lazy`] checks it, in a single
//! scan that builds nothing: every string then ends at the next quote and
//! needs no decoding. Whatever this reader is unsure of (an escape, a tab, an
//! exponent, a missing field, another op, an error of any kind) it leaves to
//! the full decoder, which says what is wrong; so it only ever accepts, and
//! only lines the full decoder accepts with the same fields. A property test
//! holds it to that.
//!
//! [`Packet::decode_lazy`]: super::Packet::decode_lazy

use super::packet::{ExText, MAX_ID_CHARS, MAX_NAME_CHARS};

/// A `send` read by [`plain_send`]: its correlation id, its topic as given,
/// and its `ex`, to be relayed as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlainSend<'a> {
    /// The request's `id`.
    pub id: Option<&'a str>,
    /// `topic`: a UUID or a name, as the client wrote it.
    pub topic: &'a str,
    /// `ex`: a non-empty object without a `for` key.
    pub ex: ExText<'a>,
}

/// Digits a number may have before the reader leaves it to the full
/// decoder, which rejects numbers out of an `f64`'s range (309 digits).
const MAX_DIGITS: usize = 300;

/// Reads `line` (without its newline) when it is a plain `send`: an object
/// with `op` `"send"`, a `topic` string and a non-empty `ex` object without
/// `for`, nested at most `max_depth` deep, with no backslash and no byte
/// below 0x20 anywhere. `None` otherwise, and for anything that is not
/// valid: the full decoder then reads it.
pub fn plain_send(line: &[u8], max_depth: usize) -> Option<PlainSend<'_>> {
    // Folded, not `any`: a branch-free pass the compiler vectorises.
    let unplain = line
        .iter()
        .fold(false, |seen, &b| seen | (b < 0x20) | (b == b'\\'));
    if unplain {
        return None;
    }
    let text = std::str::from_utf8(line).ok()?;
    let mut s = Scanner {
        text,
        at: 0,
        depth: 0,
        max_depth,
    };
    let envelope = s.envelope()?;
    s.space();
    if s.at != text.len() {
        return None;
    }
    let fits =
        |s: Option<&str>, max: usize| s.is_none_or(|s| s.len() <= max || s.chars().count() <= max);
    let ex = envelope.ex?;
    let plain = envelope.op == Some("send")
        && fits(envelope.id, MAX_ID_CHARS)
        && fits(envelope.topic, MAX_NAME_CHARS)
        && fits(envelope.from, MAX_NAME_CHARS)
        && !ex.empty
        && !ex.has_for;
    plain.then_some(PlainSend {
        id: envelope.id,
        topic: envelope.topic?,
        ex: ExText::checked(ex.text),
    })
}

/// The envelope's fields as read; the last of duplicate keys wins, as in
/// the full decoder. `null` reads as absent.
#[derive(Default)]
struct Envelope<'a> {
    id: Option<&'a str>,
    topic: Option<&'a str>,
    op: Option<&'a str>,
    from: Option<&'a str>,
    ex: Option<Object<'a>>,
}

/// An object's text and what the send path needs to know of its keys.
struct Object<'a> {
    text: &'a str,
    empty: bool,
    has_for: bool,
}

/// A cursor over text known to be UTF-8 with no backslash and no control
/// byte. Every method returns `None` at the first thing it is unsure of.
struct Scanner<'a> {
    text: &'a str,
    at: usize,
    depth: usize,
    max_depth: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    /// Skips whitespace: only spaces can be left in plain text.
    fn space(&mut self) {
        while self.peek() == Some(b' ') {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> bool {
        let found = self.peek() == Some(byte);
        if found {
            self.at += 1;
        }
        found
    }

    fn word(&mut self, word: &str) -> Option<()> {
        let end = self.at.checked_add(word.len())?;
        (self.text.get(self.at..end)? == word).then(|| self.at = end)
    }

    /// A string's contents: with no escapes, the text up to the next quote.
    fn string(&mut self) -> Option<&'a str> {
        if !self.eat(b'"') {
            return None;
        }
        let rest = self.text.as_bytes().get(self.at..)?;
        let len = memchr::memchr(b'"', rest)?;
        let s = self.text.get(self.at..self.at + len)?;
        self.at += len + 1;
        Some(s)
    }

    /// A number in JSON's grammar; `None` for an exponent or a great many
    /// digits (the full decoder judges whether it is in range). Returns
    /// whether it was an integer, and its text.
    fn number(&mut self) -> Option<(bool, &'a str)> {
        let start = self.at;
        self.eat(b'-');
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        let integer = !self.eat(b'.');
        if !integer {
            let before = self.at;
            self.digits();
            if self.at == before {
                return None;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) || self.at - start > MAX_DIGITS {
            return None;
        }
        Some((integer, self.text.get(start..self.at)?))
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
    }

    /// Any JSON value, checked and skipped.
    fn value(&mut self) -> Option<()> {
        match self.peek()? {
            b'{' => self.object().map(drop),
            b'[' => self.array(),
            b'"' => self.string().map(drop),
            b't' => self.word("true"),
            b'f' => self.word("false"),
            b'n' => self.word("null"),
            _ => self.number().map(drop),
        }
    }

    /// A container: `open`, items separated by commas, `close`, within
    /// the depth limit; each item read by `item`.
    fn items(
        &mut self,
        open: u8,
        close: u8,
        mut item: impl FnMut(&mut Self) -> Option<()>,
    ) -> Option<()> {
        if !self.eat(open) {
            return None;
        }
        self.depth += 1;
        if self.depth > self.max_depth {
            return None;
        }
        self.space();
        if !self.eat(close) {
            loop {
                self.space();
                item(self)?;
                self.space();
                if self.eat(close) {
                    break;
                }
                if !self.eat(b',') {
                    return None;
                }
            }
        }
        self.depth -= 1;
        Some(())
    }

    fn array(&mut self) -> Option<()> {
        self.items(b'[', b']', Self::value)
    }

    /// An object, its text and whether it has a `for` key.
    fn object(&mut self) -> Option<Object<'a>> {
        let start = self.at;
        let (mut empty, mut has_for) = (true, false);
        self.members(|s, key| {
            empty = false;
            has_for |= key == "for";
            s.value()
        })?;
        Some(Object {
            text: self.text.get(start..self.at)?,
            empty,
            has_for,
        })
    }

    /// An object's members, each value read by `member` given its key.
    fn members(&mut self, mut member: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.items(b'{', b'}', |s| {
            let key = s.string()?;
            s.space();
            if !s.eat(b':') {
                return None;
            }
            s.space();
            member(s, key)
        })
    }

    /// `null` (as `None`) or a string.
    fn text_or_null(&mut self) -> Option<Option<&'a str>> {
        match self.peek()? {
            b'n' => self.word("null").map(|()| None),
            _ => self.string().map(Some),
        }
    }

    /// The top-level object: the envelope's fields read, others skipped.
    fn envelope(&mut self) -> Option<Envelope<'a>> {
        self.space();
        let mut e = Envelope::default();
        self.members(|s, key| {
            match key {
                "id" => e.id = s.text_or_null()?,
                "topic" => e.topic = s.text_or_null()?,
                "op" => e.op = s.text_or_null()?,
                "from" => e.from = s.text_or_null()?,
                // Type-checked only: an integer that fits an `i64`. `-0`
                // is not one to serde_json, which reads it as a float.
                "ts" => match s.peek()? {
                    b'n' => s.word("null")?,
                    _ => match s.number()? {
                        (true, digits) if digits != "-0" => drop(digits.parse::<i64>().ok()?),
                        _ => return None,
                    },
                },
                "ex" => {
                    e.ex = match s.peek()? {
                        b'n' => s.word("null").map(|()| None)?,
                        _ => Some(s.object()?),
                    }
                }
                _ => s.value()?,
            }
            Some(())
        })?;
        Some(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Packet;
    use proptest::prelude::*;

    const DEPTH: usize = 32;

    fn read(line: &str) -> Option<PlainSend<'_>> {
        plain_send(line.as_bytes(), DEPTH)
    }

    /// What the full decoder makes of `line`, in the reader's terms:
    /// `None` unless it is a send whose `ex` is relayed as sent.
    fn full(line: &str) -> Option<(Option<String>, Option<String>, String)> {
        let lazy = Packet::decode_lazy(line.as_bytes(), DEPTH).ok()?;
        if lazy.op() != "send" {
            return None;
        }
        let (p, ex) = lazy.into_relayable().ok()?;
        Some((p.id, p.topic, ex?.get().to_owned()))
    }

    fn agree(line: &str) {
        if let Some(s) = read(line) {
            let expected = full(line);
            assert_eq!(
                Some((
                    s.id.map(str::to_owned),
                    Some(s.topic.to_owned()),
                    s.ex.get().to_owned()
                )),
                expected,
                "{line}"
            );
        }
    }

    #[test]
    fn a_usual_message_is_read() {
        let line = r#"{"op":"send","id":"c1","topic":"lobby","ex":{"body":"hi","n":[1,-2.5,{"x":null}],"ok":true}}"#;
        let s = read(line).unwrap();
        assert_eq!(s.id, Some("c1"));
        assert_eq!(s.topic, "lobby");
        assert_eq!(
            s.ex.get(),
            r#"{"body":"hi","n":[1,-2.5,{"x":null}],"ok":true}"#
        );
        agree(line);
        // Spacing, unknown keys, ts and from, duplicates (the last wins).
        let line = r#" { "id" : "a" , "x" : [ ] , "ts" : -5 , "from" : "me" , "op" : "send" , "topic" : "t" , "ex" : { "a" : 1 } , "id" : null } "#;
        let s = read(line).unwrap();
        assert_eq!((s.id, s.topic, s.ex.get()), (None, "t", r#"{ "a" : 1 }"#));
        agree(line);
    }

    #[test]
    fn anything_unusual_is_left_to_the_full_decoder() {
        for line in [
            // Not plain: an escape, a tab.
            r#"{"op":"send","topic":"t","ex":{"b":"\"q\""}}"#,
            "{\"op\":\"send\",\"topic\":\"t\",\t\"ex\":{\"b\":1}}",
            // Not a send, or not one relayed as sent.
            r#"{"op":"ping"}"#,
            r#"{"op":"send","topic":"t"}"#,
            r#"{"op":"send","topic":"t","ex":{}}"#,
            r#"{"op":"send","topic":"t","ex":null}"#,
            r#"{"op":"send","topic":"t","ex":{"for":"x"}}"#,
            r#"{"op":"send","ex":{"b":1}}"#,
            // Numbers the full decoder must judge, and bad ones.
            r#"{"op":"send","topic":"t","ex":{"b":1e400}}"#,
            r#"{"op":"send","topic":"t","ex":{"b":01}}"#,
            r#"{"op":"send","topic":"t","ex":{"b":1.}}"#,
            r#"{"op":"send","topic":"t","ex":{"b":-}}"#,
            r#"{"op":"send","topic":"t","ts":1.5,"ex":{"b":1}}"#,
            r#"{"op":"send","topic":"t","ts":99999999999999999999,"ex":{"b":1}}"#,
            // Wrong types, bad syntax, trailing text.
            r#"{"op":"send","topic":5,"ex":{"b":1}}"#,
            r#"{"op":"send","topic":"t","ex":[1]}"#,
            r#"{"op":"send","topic":"t","ex":{"b":1,}}"#,
            r#"{"op":"send","topic":"t","ex":{"b":tru}}"#,
            r#"{"op":"send","topic":"t","ex":{"b":1}} x"#,
            r#"{"op":"send","topic":"t","ex":{"b":1}"#,
        ] {
            assert_eq!(read(line), None, "{line}");
        }
        let deep = format!(
            r#"{{"op":"send","topic":"t","ex":{{"a":{}1{}}}}}"#,
            "[".repeat(DEPTH),
            "]".repeat(DEPTH)
        );
        assert_eq!(read(&deep), None);
        let long_id = format!(
            r#"{{"op":"send","id":"{}","topic":"t","ex":{{"a":1}}}}"#,
            "i".repeat(MAX_ID_CHARS + 1)
        );
        assert_eq!(read(&long_id), None);
    }

    /// Pieces of JSON, valid and not, from which lines are put together.
    fn piece() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "{",
            "}",
            "[",
            "]",
            ":",
            ",",
            " ",
            "\"",
            "\"op\"",
            "\"send\"",
            "\"topic\"",
            "\"ex\"",
            "\"id\"",
            "\"ts\"",
            "\"from\"",
            "\"for\"",
            "\"x\"",
            "\"é\"",
            "null",
            "true",
            "false",
            "0",
            "-1",
            "12",
            "1.5",
            "01",
            "1.",
            "-",
            "1e5",
            "9223372036854775808",
            "\\",
            "\t",
            "\"a b\"",
            "-0",
        ])
    }

    /// Envelope keys, and values of every type for them.
    fn member() -> impl Strategy<Value = (&'static str, &'static str)> {
        let key = prop::sample::select(vec![
            "\"id\"",
            "\"ts\"",
            "\"topic\"",
            "\"op\"",
            "\"from\"",
            "\"ex\"",
            "\"x\"",
        ]);
        let value = prop::sample::select(vec![
            "null",
            "\"send\"",
            "\"s\"",
            "\"é\"",
            "5",
            "-0",
            "0",
            "1.5",
            "true",
            "[]",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775808",
            "-9223372036854775809",
            "{}",
            "{\"a\":1}",
            "{\"for\":1}",
            "{\"a\":{\"for\":1}}",
        ]);
        (key, value)
    }

    /// Any JSON value, as serde_json writes it.
    fn json() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[a-z é\"\\\\]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec(("(for|[a-z]{0,3})", inner), 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Whatever the reader accepts, the full decoder accepts with the
        /// same id, topic and `ex` text.
        #[test]
        fn the_reader_agrees_with_the_full_decoder(
            pieces in prop::collection::vec(piece(), 0..40),
        ) {
            agree(&pieces.concat());
        }

        /// The same, for lines that start as a plain send and then vary.
        #[test]
        fn near_sends_agree_with_the_full_decoder(
            middle in prop::collection::vec(piece(), 0..12),
            tail in prop::collection::vec(piece(), 0..6),
        ) {
            let line = format!(
                r#"{{"op":"send","topic":"t","ex":{{"a":{}}}{}"#,
                middle.concat(),
                tail.concat()
            );
            agree(&line);
        }

        /// Envelopes with every field in every type, in any order: a plain
        /// send's fields and others, which may override them.
        #[test]
        fn envelopes_agree_with_the_full_decoder(
            all in prop::collection::vec(member(), 0..5).prop_flat_map(|extra| {
                let mut all = vec![("\"op\"", "\"send\""), ("\"topic\"", "\"t\""), ("\"ex\"", "{\"a\":1}")];
                all.extend(extra);
                Just(all).prop_shuffle()
            }),
        ) {
            let members: Vec<String> = all.iter().map(|(k, v)| format!("{k}:{v}")).collect();
            agree(&format!("{{{}}}", members.join(",")));
        }

        /// Any `ex` is read when it is plain, and always read as the full
        /// decoder reads it.
        #[test]
        fn any_ex_agrees_with_the_full_decoder(ex in json()) {
            let text = serde_json::to_string(&ex).unwrap_or_default();
            let line = format!(r#"{{"op":"send","topic":"t","ex":{{"v":{text}}}}}"#);
            agree(&line);
            // An exponent follows a digit; `e` elsewhere is in a word.
            let exponent = text.as_bytes().windows(2).any(|w| {
                w.first().is_some_and(u8::is_ascii_digit) && matches!(w.get(1), Some(b'e' | b'E'))
            });
            let plain = !text.contains('\\') && !exponent;
            prop_assert_eq!(read(&line).is_some(), plain, "{}", line);
        }
    }
}
