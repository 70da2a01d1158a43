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

use super::packet::{ExText, MAX_ID_CHARS, MAX_NAME_CHARS, utf8_within_chars, within_chars};

/// A `send` read by [`plain_send`]: its correlation id, its topic as given,
/// and its `ex`, to be relayed as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlainSend<'a> {
    /// The request's `id`.
    pub id: Option<&'a str>,
    /// `topic`: a UUID or a name, as the client wrote it. UTF-8, but not
    /// made a `str` here: checking it again costs more than the rest of
    /// the send's handling of it, where a session compares it with the
    /// topic it sent to last ([`PlainSend::topic_text`] makes it one).
    pub topic: &'a [u8],
    /// `ex`: a non-empty object without a `for` key.
    pub ex: ExText<'a>,
}

impl PlainSend<'_> {
    /// `topic` as text. Exact: [`plain_send`] accepts only UTF-8 lines, and
    /// the topic lies between two ASCII quotes of one.
    pub fn topic_text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(self.topic)
    }
}

/// Digits a number may have before the reader leaves it to the full
/// decoder, which rejects numbers out of an `f64`'s range (309 digits).
const MAX_DIGITS: usize = 300;

/// Reads `line` (without its newline) when it is a plain `send`: an object
/// with `op` `"send"`, a `topic` string and a non-empty `ex` object without
/// `for`, nested at most `max_depth` deep, with no backslash and no byte
/// below 0x20 anywhere. `None` otherwise, and for anything that is not
/// valid: the full decoder then reads it.
pub fn plain_send<'a>(line: &'a [u8], max_depth: usize) -> Option<PlainSend<'a>> {
    // Folded, not `any`: a branch-free pass the compiler vectorises.
    let (unplain, wide) = line.iter().fold((false, false), |(unplain, wide), &b| {
        (unplain | (b < 0x20) | (b == b'\\'), wide | (b >= 0x80))
    });
    // All ASCII is UTF-8: only a line with wider characters is checked.
    if unplain || (wide && std::str::from_utf8(line).is_err()) {
        return None;
    }
    let mut s = Scanner {
        bytes: line,
        at: 0,
        depth: 0,
        max_depth,
    };
    let envelope = s.envelope()?;
    s.space();
    if s.at != line.len() {
        return None;
    }
    // The line is UTF-8 and every string ends at an ASCII quote: each is
    // UTF-8 too (checked again here, which costs little on short text).
    let text = |s: Option<&'a [u8]>| s.map(std::str::from_utf8).transpose().ok();
    let (id, from) = (text(envelope.id)?, text(envelope.from)?);
    let fits = |s: Option<&str>, max: usize| s.is_none_or(|s| within_chars(s, max));
    let topic = envelope.topic?;
    let ex = envelope.ex?;
    let plain = envelope.op == Some(b"send".as_slice())
        && fits(id, MAX_ID_CHARS)
        && utf8_within_chars(topic, MAX_NAME_CHARS)
        && fits(from, MAX_NAME_CHARS)
        && !ex.empty
        && !ex.has_for;
    plain.then_some(PlainSend {
        id,
        topic,
        ex: ExText::checked(ex.text),
    })
}

/// Where the first `"` in `text` is. Most strings are short keys, where
/// memchr's setup costs more than the search: the first eight bytes are
/// looked at in one word, the rest a vector at a time. (Counted with
/// cachegrind on chatbench's `send`: 1,286 instructions a line, against
/// 2,059 with a byte loop over the first 16 and 1,415 with memchr alone.)
fn quote_in(text: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    const QUOTES: u64 = u64::from_ne_bytes([b'"'; 8]);
    if let Some(word) = text.first_chunk::<8>() {
        // A quote's byte is zero here; the lowest flagged byte is the
        // first zero byte (a borrow only flags bytes above it).
        let zeroed = u64::from_le_bytes(*word) ^ QUOTES;
        let found = zeroed.wrapping_sub(ONES) & !zeroed & HIGH;
        if found != 0 {
            return Some(found.trailing_zeros() as usize / 8);
        }
        return memchr::memchr(b'"', text.get(8..)?).map(|len| 8 + len);
    }
    memchr::memchr(b'"', text)
}

/// The envelope's fields as read; the last of duplicate keys wins, as in
/// the full decoder. `null` reads as absent.
#[derive(Default)]
struct Envelope<'a> {
    id: Option<&'a [u8]>,
    topic: Option<&'a [u8]>,
    op: Option<&'a [u8]>,
    from: Option<&'a [u8]>,
    ex: Option<Object<'a>>,
}

/// An object's text and what the send path needs to know of its keys.
struct Object<'a> {
    text: &'a [u8],
    empty: bool,
    has_for: bool,
}

/// A cursor over text known to be UTF-8 with no backslash and no control
/// byte. Every method returns `None` at the first thing it is unsure of.
struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
    depth: usize,
    max_depth: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
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

    fn word(&mut self, word: &[u8]) -> Option<()> {
        let end = self.at.checked_add(word.len())?;
        (self.bytes.get(self.at..end)? == word).then(|| self.at = end)
    }

    /// A string's contents: with no escapes, the text up to the next quote.
    fn string(&mut self) -> Option<&'a [u8]> {
        if !self.eat(b'"') {
            return None;
        }
        let rest = self.bytes.get(self.at..)?;
        let len = quote_in(rest)?;
        let s = rest.get(..len)?;
        self.at += len + 1;
        Some(s)
    }

    /// A number in JSON's grammar; `None` for an exponent or a great many
    /// digits (the full decoder judges whether it is in range). Returns
    /// whether it was an integer, and its text.
    fn number(&mut self) -> Option<(bool, &'a [u8])> {
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
        Some((integer, self.bytes.get(start..self.at)?))
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
            b't' => self.word(b"true"),
            b'f' => self.word(b"false"),
            b'n' => self.word(b"null"),
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
            has_for |= key == b"for";
            s.value()
        })?;
        Some(Object {
            text: self.bytes.get(start..self.at)?,
            empty,
            has_for,
        })
    }

    /// An object's members, each value read by `member` given its key.
    fn members(&mut self, mut member: impl FnMut(&mut Self, &'a [u8]) -> Option<()>) -> Option<()> {
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
    fn text_or_null(&mut self) -> Option<Option<&'a [u8]>> {
        match self.peek()? {
            b'n' => self.word(b"null").map(|()| None),
            _ => self.string().map(Some),
        }
    }

    /// The top-level object: the envelope's fields read, others skipped.
    fn envelope(&mut self) -> Option<Envelope<'a>> {
        self.space();
        let mut e = Envelope::default();
        self.members(|s, key| {
            match key {
                b"id" => e.id = s.text_or_null()?,
                b"topic" => e.topic = s.text_or_null()?,
                b"op" => e.op = s.text_or_null()?,
                b"from" => e.from = s.text_or_null()?,
                // Type-checked only: an integer that fits an `i64`. `-0`
                // is not one to serde_json, which reads it as a float.
                b"ts" => match s.peek()? {
                    b'n' => s.word(b"null")?,
                    _ => match s.number()? {
                        (true, digits) if digits != b"-0" => {
                            std::str::from_utf8(digits).ok()?.parse::<i64>().ok()?;
                        }
                        _ => return None,
                    },
                },
                b"ex" => {
                    e.ex = match s.peek()? {
                        b'n' => s.word(b"null").map(|()| None)?,
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
    fn full(line: &str) -> Option<(Option<String>, Option<String>, Vec<u8>)> {
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
                    Some(s.topic_text().into_owned()),
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
        assert_eq!(s.topic, b"lobby");
        assert_eq!(
            s.ex.get(),
            br#"{"body":"hi","n":[1,-2.5,{"x":null}],"ok":true}"#
        );
        agree(line);
        // Spacing, unknown keys, ts and from, duplicates (the last wins).
        let line = r#" { "id" : "a" , "x" : [ ] , "ts" : -5 , "from" : "me" , "op" : "send" , "topic" : "t" , "ex" : { "a" : 1 } , "id" : null } "#;
        let s = read(line).unwrap();
        assert_eq!(
            (s.id, s.topic, s.ex.get()),
            (None, b"t".as_slice(), br#"{ "a" : 1 }"#.as_slice())
        );
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
        // Not UTF-8 (the full decoder says `packet/bad-utf8`); wider
        // characters that are UTF-8 are read.
        let bad = b"{\"op\":\"send\",\"topic\":\"caf\xe9\",\"ex\":{\"a\":1}}";
        assert_eq!(plain_send(bad, DEPTH), None);
        let wide = r#"{"op":"send","topic":"café","ex":{"a":"é"}}"#;
        assert_eq!(read(wide).map(|s| s.topic), Some("café".as_bytes()));
        agree(wide);
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
        // A topic's limit is in characters, counted on its bytes: as many
        // two-byte characters as the limit allows are read, one more not.
        for (n, ok) in [(MAX_NAME_CHARS, true), (MAX_NAME_CHARS + 1, false)] {
            let line = format!(
                r#"{{"op":"send","topic":"{}","ex":{{"a":1}}}}"#,
                "é".repeat(n)
            );
            assert_eq!(read(&line).is_some(), ok, "{n}");
            agree(&line);
        }
    }

    /// At the deepest limit the configuration allows, both readers take a
    /// line nested exactly that deep (under `ex` or an unknown key), and
    /// one level more is the full decoder's `packet/too-deep`.
    #[test]
    fn nesting_at_the_deepest_limit_agrees() {
        use crate::proto::packet::MAX_JSON_DEPTH;
        let nested = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        for (levels, ok) in [(MAX_JSON_DEPTH - 1, true), (MAX_JSON_DEPTH, false)] {
            // The packet is level 1: `levels` brackets inside it.
            let under_key = format!(
                r#"{{"op":"send","topic":"t","ex":{{"a":1}},"x":{}}}"#,
                nested(levels)
            );
            let under_ex = format!(
                r#"{{"op":"send","topic":"t","ex":{{"a":{}}}}}"#,
                nested(levels - 1)
            );
            for line in [under_key, under_ex] {
                let fast = plain_send(line.as_bytes(), MAX_JSON_DEPTH);
                let full = Packet::decode_lazy(line.as_bytes(), MAX_JSON_DEPTH)
                    .and_then(|l| l.into_relayable());
                assert_eq!(fast.is_some(), ok, "{line}");
                match full {
                    Ok((_, ex)) => {
                        assert!(ok, "{line}");
                        assert_eq!(fast.map(|s| s.ex), ex);
                    }
                    Err(e) => {
                        assert!(!ok, "{line}");
                        assert_eq!(e.code, crate::proto::ErrorCode::PacketTooDeep);
                    }
                }
            }
        }
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

        /// The word-at-a-time search finds the first quote, wherever it
        /// is, among bytes of any value (a quote's neighbours, and bytes
        /// above ASCII, must not be taken for one).
        #[test]
        fn quote_in_finds_the_first_quote(
            text in prop::collection::vec(
                prop::sample::select(vec![b'"', b'#', b'!', 0xa2, 0x80, 0x7f, 0x01, 0xff, b'a']),
                0..40,
            ),
        ) {
            prop_assert_eq!(quote_in(&text), text.iter().position(|&b| b == b'"'));
        }
    }
}
