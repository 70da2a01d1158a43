//! The packet envelope (`id ts topic op from ex`): decoding one line from a
//! peer, and encoding a packet once into shareable bytes.

use bytes::Bytes;
use serde::Serialize;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::code::ErrorCode;
use super::id;
use super::id::UuidText;

/// Longest `id` a client may send; it is echoed back in `ex.for`.
pub const MAX_ID_CHARS: usize = 128;
/// Longest `op` name.
pub const MAX_OP_CHARS: usize = 64;
/// Longest `topic` or `from` string in an envelope.
pub const MAX_NAME_CHARS: usize = 320;
/// The deepest nesting `limits.max_json_depth` may allow: serde_json refuses
/// to go 128 levels deep.
pub const MAX_JSON_DEPTH: usize = 127;

/// One packet: the envelope fields and the op-specific `ex` object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Packet {
    /// Packet id: server-assigned on packets the server sends; a correlation
    /// token on client requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Unix milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ts: Option<i64>,
    /// The topic's UUID, when the packet is about a topic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// The operation.
    pub op: String,
    /// Origin: `name`, `name@server` or `@server`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Op-specific data (always an object; empty when absent on the wire).
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub ex: Map<String, Value>,
}

/// Why a line is not a packet: a stable code and a human message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct DecodeError {
    /// The stable code.
    pub code: ErrorCode,
    /// Says what was wrong, never echoing the input.
    pub message: String,
    /// The packet's `id`, when it could be read, so the error can carry `for`.
    pub id: Option<String>,
}

impl DecodeError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            id: None,
        }
    }
}

impl Packet {
    /// A packet the server originates: fresh id and timestamp.
    pub fn server(op: &str) -> Self {
        let ts = id::now_ms();
        Self {
            id: Some(id::uuid_at(ts).to_string()),
            ts: Some(ts),
            topic: None,
            op: op.to_owned(),
            from: None,
            ex: Map::new(),
        }
    }

    /// A packet with only an op (what clients usually send).
    pub fn request(op: &str) -> Self {
        Self {
            id: None,
            ts: None,
            topic: None,
            op: op.to_owned(),
            from: None,
            ex: Map::new(),
        }
    }

    /// Sets `ex[key] = value`, builder style.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.ex.insert(key.to_owned(), value.into());
        self
    }

    /// Sets `id`, builder style.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Sets `from`, builder style.
    pub fn with_from(mut self, from: impl Into<String>) -> Self {
        self.from = Some(from.into());
        self
    }

    /// Marks the packet as the answer to a request: `ex.for` is the
    /// request's id, when it had one.
    pub fn answering(self, request_id: Option<&str>) -> Self {
        match request_id {
            Some(id) => self.with("for", id),
            None => self,
        }
    }

    /// `ex[key]` as a string, if it is one.
    pub fn ex_str(&self, key: &str) -> Option<&str> {
        self.ex.get(key).and_then(Value::as_str)
    }

    /// Serializes once into a newline-terminated line, ready to be shared by
    /// every recipient.
    pub fn to_line(&self) -> Bytes {
        encode_line(self)
    }

    /// Decodes one line (without its newline) from a peer.
    pub fn decode(line: &[u8], max_depth: usize) -> Result<Packet, DecodeError> {
        Packet::decode_with(line, max_depth, false)?.into_packet()
    }

    /// Decodes one line like [`Packet::decode`], every check included, but
    /// for a `send` (the one op whose `ex` the server passes on rather than
    /// reads) leaves a non-empty `ex` object as the JSON text it arrived as:
    /// the relay can carry it on without building it as a map.
    pub fn decode_lazy(line: &[u8], max_depth: usize) -> Result<Lazy<'_>, DecodeError> {
        Packet::decode_with(line, max_depth, true)
    }

    /// The decoder; `lazy` keeps a `send`'s `ex` as text. Any other `ex` is
    /// built in the same pass that checks it.
    fn decode_with(line: &[u8], max_depth: usize, lazy: bool) -> Result<Lazy<'_>, DecodeError> {
        let text = std::str::from_utf8(line).map_err(|e| {
            DecodeError::new(
                ErrorCode::PacketBadUtf8,
                format!("invalid UTF-8 at byte {}", e.valid_up_to()),
            )
        })?;
        // Each level opens with a bracket: a line with few brackets (every
        // usual packet) cannot be too deep, and counting them is a vector
        // scan where the exact depth is a byte-by-byte one.
        if memchr::memchr2_iter(b'{', b'[', line).count() > max_depth {
            let depth = json_depth(line);
            if depth > max_depth {
                return Err(DecodeError::new(
                    ErrorCode::PacketTooDeep,
                    format!("JSON nests {depth} levels deep; the limit is {max_depth}"),
                ));
            }
        }
        let wire: Wire = serde_json::from_str(text).map_err(|e| malformed(&e))?;
        let Wire::Object(mut obj) = wire else {
            return Err(DecodeError::new(
                ErrorCode::PacketNotObject,
                "a packet must be a JSON object",
            ));
        };
        // Read `id` first so that every later error can still answer `for` it.
        let id = take_string(obj.id.take(), "id", MAX_ID_CHARS)?;
        let with_id = |mut e: DecodeError| {
            e.id.clone_from(&id);
            e
        };
        let ts = match obj.ts.take() {
            None | Some(Field::Null) => None,
            Some(Field::Int(v)) => Some(v),
            Some(_) => return Err(with_id(bad_field("ts", "an integer (Unix milliseconds)"))),
        };
        let topic = take_string(obj.topic.take(), "topic", MAX_NAME_CHARS).map_err(with_id)?;
        let from = take_string(obj.from.take(), "from", MAX_NAME_CHARS).map_err(with_id)?;
        let keep_text = lazy && matches!(&obj.op, Some(Field::Str(op)) if op == "send");
        let not_object = || with_id(bad_field("ex", "an object"));
        let (ex, text) = match obj.ex.take() {
            None => (Map::new(), None),
            Some(raw) if keep_text => {
                match serde_json::from_str(raw.get()).map_err(|e| with_id(malformed(&e)))? {
                    ExShape::Null | ExShape::Object { empty: true, .. } => (Map::new(), None),
                    ExShape::Object { has_for, .. } => (Map::new(), Some((raw, has_for))),
                    ExShape::Other => return Err(not_object()),
                }
            }
            Some(raw) => {
                match serde_json::from_str(raw.get()).map_err(|e| with_id(malformed(&e)))? {
                    Value::Null => (Map::new(), None),
                    Value::Object(m) => (m, None),
                    _ => return Err(not_object()),
                }
            }
        };
        let op = match take_string(obj.op.take(), "op", MAX_OP_CHARS).map_err(with_id)? {
            Some(op) if !op.is_empty() => op,
            _ => {
                return Err(with_id(DecodeError::new(
                    ErrorCode::PacketMissingOp,
                    "a packet needs an `op` string",
                )));
            }
        };
        Ok(Lazy {
            packet: Packet {
                id,
                ts,
                topic,
                op,
                from,
                ex,
            },
            text,
        })
    }
}

/// A decoded packet; a `send`'s non-empty `ex` object may still be JSON
/// text borrowed from the line (already checked: an object of valid JSON).
#[derive(Debug)]
pub struct Lazy<'a> {
    packet: Packet,
    /// `ex` as text, when it was kept so, and whether it has a `for` key.
    text: Option<(&'a RawValue, bool)>,
}

impl<'a> Lazy<'a> {
    /// The op.
    pub fn op(&self) -> &str {
        &self.packet.op
    }

    /// The packet with `ex` built as a map.
    pub fn into_packet(self) -> Result<Packet, DecodeError> {
        let mut packet = self.packet;
        if let Some((raw, _)) = self.text {
            packet.ex = parse_ex(ExText(raw.get().as_bytes())).map_err(|mut e| {
                e.id.clone_from(&packet.id);
                e
            })?;
        }
        Ok(packet)
    }

    /// The packet without `ex`, and `ex` as sent, when it can be relayed
    /// as it is (a non-empty object without `for`, which is the server's);
    /// otherwise the packet with `ex` built as a map, and `None`.
    pub fn into_relayable(self) -> Result<(Packet, Option<ExText<'a>>), DecodeError> {
        match self.text {
            Some((raw, false)) => Ok((self.packet, Some(ExText(raw.get().as_bytes())))),
            _ => Ok((self.into_packet()?, None)),
        }
    }
}

/// A message's `ex` as the sender wrote it, relayed unchanged: JSON text
/// already checked to be an object, non-empty and without a `for` key.
/// Only the decoders make one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExText<'a>(&'a [u8]);

impl<'a> ExText<'a> {
    /// Text the caller has checked as [`ExText`] requires.
    pub(super) fn checked(text: &'a [u8]) -> Self {
        ExText(text)
    }

    /// The JSON text, UTF-8.
    pub fn get(self) -> &'a [u8] {
        self.0
    }
}

/// Builds an `ex` kept as text into a map (for the ops that read it, and
/// for messages kept in history).
pub fn parse_ex(raw: ExText<'_>) -> Result<Map<String, Value>, DecodeError> {
    serde_json::from_slice(raw.get()).map_err(|e| malformed(&e))
}

/// Whether `ex` (JSON text) is the empty object, or no text at all: an
/// envelope leaves such an `ex` out (protocol.md 6).
pub fn is_empty_ex(ex: &[u8]) -> bool {
    let mut text = ex.iter().filter(|b| !b.is_ascii_whitespace());
    match text.next() {
        None => true,
        Some(b'{') => text.next() == Some(&b'}') && text.next().is_none(),
        Some(_) => false,
    }
}

/// Appends the relayed `send` of a message whose `ex` is carried as sent:
/// the same envelope as `Packet::server("send")` with `topic`, `from` and
/// `ex`, in the same field order, written in one pass (an empty `ex` left
/// out, as there). The ids are typed: a formatted UUID never needs
/// escaping. `from_json` is the sender's name already written as a JSON
/// string (once per login, not per message).
pub fn write_relay(
    buf: &mut Vec<u8>,
    id: &UuidText,
    ts: i64,
    topic: &UuidText,
    from_json: &str,
    ex: &[u8],
) {
    let [open, ts_key, topic_key, from_key, ex_key, close] = RELAY_PIECES;
    buf.extend_from_slice(open);
    write_uuid(buf, id);
    buf.extend_from_slice(ts_key);
    buf.extend_from_slice(itoa::Buffer::new().format(ts).as_bytes());
    buf.extend_from_slice(topic_key);
    write_uuid(buf, topic);
    buf.extend_from_slice(from_key);
    buf.extend_from_slice(from_json.as_bytes());
    if !is_empty_ex(ex) {
        buf.extend_from_slice(ex_key);
        buf.extend_from_slice(ex);
    }
    buf.extend_from_slice(close);
}

/// The fixed text of a relay, between its fields ([`write_relay`]).
const RELAY_PIECES: [&[u8]; 6] = [
    b"{\"id\":",
    b",\"ts\":",
    b",\"topic\":",
    b",\"op\":\"send\",\"from\":",
    b",\"ex\":",
    b"}\n",
];

/// The length of the line [`write_relay`] writes, newline included: a kept
/// message's size is checked against the line limit before it is queued
/// for commit, without writing a relay that would be thrown away.
pub fn relay_len(ts: i64, from_json: &str, ex: &[u8]) -> usize {
    let [open, ts_key, topic_key, from_key, ex_key, close] = RELAY_PIECES;
    // Two quoted UUIDs: 36 characters and two quotes each.
    let fixed = open.len() + ts_key.len() + topic_key.len() + from_key.len() + close.len() + 2 * 38;
    let ex = if is_empty_ex(ex) {
        0
    } else {
        ex_key.len() + ex.len()
    };
    fixed + itoa::Buffer::new().format(ts).len() + from_json.len() + ex
}

/// A kept message's relay, as members connected to another node get it and
/// as `history` shows it: `Packet::server("send")`'s fields in its order,
/// `ex` the stored JSON text, written as it is (numbers keep every digit).
#[derive(Debug, Serialize)]
pub struct KeptSend<'a> {
    id: &'a str,
    ts: i64,
    topic: &'a str,
    op: &'static str,
    from: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ex: Option<&'a RawValue>,
}

impl<'a> KeptSend<'a> {
    /// The relay of `m`, stamped `ts`, in topic `topic` (its UUID, as
    /// text), from `from` (the sender as shown).
    pub fn new(m: &'a crate::change::Message, ts: i64, topic: &'a str, from: &'a str) -> Self {
        Self {
            id: &m.id,
            ts,
            topic,
            op: "send",
            from,
            ex: (!m.ex.is_empty()).then(|| m.ex.raw()),
        }
    }
}

/// Appends a UUID as a JSON string.
pub(crate) fn write_uuid(buf: &mut Vec<u8>, id: &UuidText) {
    buf.push(b'"');
    buf.extend_from_slice(id.as_bytes());
    buf.push(b'"');
}

/// Appends any text as a JSON string, escaped as serde_json escapes it
/// (quotes, backslashes and control characters). Text with nothing to
/// escape (ids, names, kinds: nearly all of it) is copied as it is,
/// without serde's writer (a kept message's record spent 1.6% of the
/// server's time there; bench/README.md, twenty-first round).
pub(crate) fn write_str(buf: &mut Vec<u8>, text: &str) {
    if text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        buf.reserve(text.len() + 2);
        buf.push(b'"');
        buf.extend_from_slice(text.as_bytes());
        buf.push(b'"');
        return;
    }
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(buf, text);
}

fn malformed(e: &serde_json::Error) -> DecodeError {
    DecodeError::new(
        ErrorCode::PacketMalformed,
        format!(
            "invalid JSON at line {} column {}: {}",
            e.line(),
            e.column(),
            classify(e)
        ),
    )
}

/// Serializes any packet shape into one newline-terminated line.
pub(crate) fn encode_line<T: Serialize>(packet: &T) -> Bytes {
    // Room for a relayed chat message without regrowing.
    let mut buf = Vec::with_capacity(320);
    write_line(&mut buf, packet);
    Bytes::from(buf)
}

/// Appends any packet shape as one newline-terminated line.
pub(crate) fn write_line<T: Serialize>(buf: &mut Vec<u8>, packet: &T) {
    let start = buf.len();
    // Serializing strings, integers and JSON values into a Vec cannot fail.
    if serde_json::to_writer(&mut *buf, packet).is_err() {
        buf.truncate(start);
        buf.extend_from_slice(br#"{"op":"error"}"#);
    }
    buf.push(b'\n');
}

fn bad_field(field: &str, expected: &str) -> DecodeError {
    DecodeError::new(
        ErrorCode::PacketBadField,
        format!("field `{field}` must be {expected}"),
    )
}

/// Whether `s` has at most `max` characters, as envelope bounds count.
pub(crate) fn within_chars(s: &str, max: usize) -> bool {
    utf8_within_chars(s.as_bytes(), max)
}

/// [`within_chars`] for bytes known to be UTF-8 (a plain send's topic,
/// not made a `str`): every byte but a continuation byte starts a
/// character.
pub(crate) fn utf8_within_chars(bytes: &[u8], max: usize) -> bool {
    // Under the limit in bytes is under it in characters.
    bytes.len() <= max || bytes.iter().filter(|&&b| b & 0xc0 != 0x80).count() <= max
}

fn take_string(
    value: Option<Field<'_>>,
    field: &str,
    max_chars: usize,
) -> Result<Option<String>, DecodeError> {
    match value {
        None | Some(Field::Null) => Ok(None),
        Some(Field::Str(s)) if within_chars(&s, max_chars) => Ok(Some(s.into_owned())),
        Some(Field::Str(_)) => Err(bad_field(
            field,
            &format!("a string of at most {max_chars} characters"),
        )),
        Some(_) => Err(bad_field(field, "a string")),
    }
}

/// The visitor methods for arrays (each element read as [`Checked`]) and
/// JSON's scalars (booleans, numbers, strings), each answering `$value`:
/// what a visitor that only cares about objects makes of everything else.
macro_rules! non_objects_are {
    ($value:expr) => {
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<Checked>()?.is_some() {}
            Ok($value)
        }

        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($value)
        }

        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($value)
        }

        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($value)
        }

        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($value)
        }

        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
}

/// A line as read from the wire: the envelope's fields, still untyped, or
/// the fact that it was valid JSON but not an object. Read field by field,
/// so the top-level object is never built as a map (the per-message path
/// spent a fifth of its time there); the last of duplicate keys wins, as it
/// would in a map, and unknown keys are checked for syntax and skipped.
// Lives on the stack for one decode; boxing the fields would bring back an
// allocation per packet.
#[allow(clippy::large_enum_variant)]
enum Wire<'a> {
    /// A JSON object.
    Object(Fields<'a>),
    /// Any other JSON value.
    Other,
}

/// The envelope fields of an object, each as read.
#[derive(Default)]
struct Fields<'a> {
    id: Option<Field<'a>>,
    ts: Option<Field<'a>>,
    topic: Option<Field<'a>>,
    op: Option<Field<'a>>,
    from: Option<Field<'a>>,
    /// Kept as text; its shape is checked once the envelope is read.
    ex: Option<&'a RawValue>,
}

impl<'de> Deserialize<'de> for Wire<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(WireVisitor)
    }
}

struct WireVisitor;

impl<'de> Visitor<'de> for WireVisitor {
    type Value = Wire<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Wire<'de>, A::Error> {
        let mut fields = Fields::default();
        while let Some(key) = map.next_key::<Key>()? {
            let slot = match key {
                Key::Id => &mut fields.id,
                Key::Ts => &mut fields.ts,
                Key::Topic => &mut fields.topic,
                Key::Op => &mut fields.op,
                Key::From => &mut fields.from,
                Key::Ex => {
                    // A later `ex` replaces this one, which is then checked
                    // as any other dropped value is.
                    if let Some(old) = fields.ex.replace(map.next_value()?) {
                        serde_json::from_str::<Checked>(old.get())
                            .map_err(serde::de::Error::custom)?;
                    }
                    continue;
                }
                Key::Other => {
                    map.next_value::<Checked>()?;
                    continue;
                }
            };
            *slot = Some(map.next_value()?);
        }
        Ok(Wire::Object(fields))
    }

    non_objects_are!(Wire::Other);

    fn visit_unit<E>(self) -> Result<Wire<'de>, E> {
        Ok(Wire::Other)
    }
}

/// A value that is read and dropped, but checked as strictly as a parsed
/// `Value` would be: serde_json's `IgnoredAny` skips strings and numbers
/// without rejecting lone surrogates (`"\udc00"`) or numbers out of range
/// (`1e400`), which must stay `packet/malformed` wherever they appear.
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CheckedVisitor)
    }
}

struct CheckedVisitor;

impl<'de> Visitor<'de> for CheckedVisitor {
    type Value = Checked;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        while map.next_entry::<Checked, Checked>()?.is_some() {}
        Ok(Checked)
    }

    non_objects_are!(Checked);

    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }
}

/// An envelope field's value, as much of it as the checks need: text kept
/// borrowed from the line when it has no escapes, and everything that is
/// neither text, an integer nor null checked as strictly as a full parse
/// ([`Checked`]) and dropped. Much smaller than a `Value`, and never a map.
enum Field<'a> {
    Null,
    Str(std::borrow::Cow<'a, str>),
    /// An integer that fits an `i64`.
    Int(i64),
    Other,
}

impl<'de> Deserialize<'de> for Field<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FieldVisitor)
    }
}

struct FieldVisitor;

impl<'de> Visitor<'de> for FieldVisitor {
    type Value = Field<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Field<'de>, A::Error> {
        while map.next_entry::<Checked, Checked>()?.is_some() {}
        Ok(Field::Other)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Field<'de>, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Field::Other)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Field<'de>, E> {
        Ok(Field::Other)
    }

    fn visit_i64<E>(self, v: i64) -> Result<Field<'de>, E> {
        Ok(Field::Int(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Field<'de>, E> {
        Ok(i64::try_from(v).map_or(Field::Other, Field::Int))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Field<'de>, E> {
        Ok(Field::Other)
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Field<'de>, E> {
        Ok(Field::Str(std::borrow::Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Field<'de>, E> {
        Ok(Field::Str(std::borrow::Cow::Owned(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Field<'de>, E> {
        Ok(Field::Str(std::borrow::Cow::Owned(v)))
    }

    fn visit_unit<E>(self) -> Result<Field<'de>, E> {
        Ok(Field::Null)
    }
}

/// What `ex` is, read from its text without building it: null, an object
/// (how many keys, whether one is `for`), or anything else. Values are
/// checked as strictly as a full parse ([`Checked`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExShape {
    Null,
    Object { empty: bool, has_for: bool },
    Other,
}

impl<'de> Deserialize<'de> for ExShape {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ShapeVisitor;
        impl<'de> Visitor<'de> for ShapeVisitor {
            type Value = ExShape;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ExShape, A::Error> {
                let (mut empty, mut has_for) = (true, false);
                while let Some(key) = map.next_key::<ForKey>()? {
                    map.next_value::<Checked>()?;
                    empty = false;
                    has_for |= key.0;
                }
                Ok(ExShape::Object { empty, has_for })
            }
            fn visit_unit<E>(self) -> Result<ExShape, E> {
                Ok(ExShape::Null)
            }
            non_objects_are!(ExShape::Other);
        }
        d.deserialize_any(ShapeVisitor)
    }
}

/// An `ex` key: whether it is `for`.
struct ForKey(bool);

impl<'de> Deserialize<'de> for ForKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ForVisitor;
        impl Visitor<'_> for ForVisitor {
            type Value = ForKey;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E>(self, key: &str) -> Result<ForKey, E> {
                Ok(ForKey(key == "for"))
            }
        }
        d.deserialize_str(ForVisitor)
    }
}

/// A top-level key, recognised without allocating it.
enum Key {
    Id,
    Ts,
    Topic,
    Op,
    From,
    Ex,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "id" => Key::Id,
                    "ts" => Key::Ts,
                    "topic" => Key::Topic,
                    "op" => Key::Op,
                    "from" => Key::From,
                    "ex" => Key::Ex,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// serde_json's category, without echoing any of the input back.
fn classify(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Eof => "unexpected end of input",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "invalid data",
        serde_json::error::Category::Io => "read error",
    }
}

/// Deepest nesting of objects and arrays, counted without parsing, so a
/// hostile `[[[[…` is refused before any recursion.
pub fn json_depth(bytes: &[u8]) -> usize {
    let mut depth = 0usize;
    let mut max = 0usize;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        i += 1;
        match b {
            // Skip a string whole: jump from quote or backslash to the next
            // (memchr), so the usual packet, mostly string bytes, is scanned
            // a vector at a time.
            b'"' => loop {
                let Some(at) = bytes
                    .get(i..)
                    .and_then(|rest| memchr::memchr2(b'"', b'\\', rest))
                else {
                    return max;
                };
                let found = bytes.get(i + at).copied();
                // A backslash escapes the byte after it, whatever it is.
                i += at + if found == Some(b'\\') { 2 } else { 1 };
                if found == Some(b'"') {
                    break;
                }
            },
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn code(line: &str) -> ErrorCode {
        Packet::decode(line.as_bytes(), 32).unwrap_err().code
    }

    #[test]
    fn decodes_envelope() {
        let p = Packet::decode(
            br#"{"id":"a1","ts":5,"topic":"t","op":"send","from":"x","ex":{"data":"hi"},"extra":1}"#,
            32,
        )
        .unwrap();
        assert_eq!(p.id.as_deref(), Some("a1"));
        assert_eq!(p.ts, Some(5));
        assert_eq!(p.op, "send");
        assert_eq!(p.ex_str("data"), Some("hi"));
    }

    #[test]
    fn each_bad_input_has_its_code() {
        assert_eq!(code("{"), ErrorCode::PacketMalformed);
        assert_eq!(code("[1]"), ErrorCode::PacketNotObject);
        assert_eq!(code("\"op\""), ErrorCode::PacketNotObject);
        assert_eq!(code(r#"{"op":5}"#), ErrorCode::PacketBadField);
        assert_eq!(code(r#"{"op":"ping","ex":[]}"#), ErrorCode::PacketBadField);
        assert_eq!(
            code(r#"{"op":"ping","ts":"now"}"#),
            ErrorCode::PacketBadField
        );
        assert_eq!(code(r#"{"op":"ping","ts":1.5}"#), ErrorCode::PacketBadField);
        assert_eq!(code(r#"{"op":"ping","id":7}"#), ErrorCode::PacketBadField);
        assert_eq!(code(r#"{"id":"x"}"#), ErrorCode::PacketMissingOp);
        assert_eq!(code(r#"{"op":""}"#), ErrorCode::PacketMissingOp);
        // Bad strings and numbers are malformed wherever they are, as in a
        // full parse: in unknown keys, in `ex`, and in a non-object.
        for bad in [
            r#""\udc00""#,
            r#""\ud800x""#,
            "1e400",
            r#"{"k":"\udc00"}"#,
            "[1e400]",
        ] {
            assert_eq!(
                code(&format!(r#"{{"op":"ping","x":{bad}}}"#)),
                ErrorCode::PacketMalformed
            );
            assert_eq!(
                code(&format!(r#"{{"op":"ping","ex":{{"x":{bad}}}}}"#)),
                ErrorCode::PacketMalformed
            );
            assert_eq!(code(&format!("[{bad}]")), ErrorCode::PacketMalformed);
        }
        assert_eq!(
            code(r#"{"op":"ping","\udc00":1}"#),
            ErrorCode::PacketMalformed
        );
        let deep = format!(
            "{{\"op\":\"ping\",\"ex\":{{\"a\":{}{}}}}}",
            "[".repeat(40),
            "]".repeat(40)
        );
        assert_eq!(code(&deep), ErrorCode::PacketTooDeep);
        let err = Packet::decode(b"{\"op\":\"x\xff\"}", 32).unwrap_err();
        assert_eq!(err.code, ErrorCode::PacketBadUtf8);
    }

    #[test]
    fn a_relay_written_from_parts_is_the_packet() {
        let ex = r#"{"data":"caf\u00e9 \"q\"","n":[1,2.5,null],"o":{"x":true}}"#;
        let raw: Box<RawValue> = serde_json::from_str(ex).unwrap();
        let (id, topic) = (crate::proto::id::new_uuid(), crate::proto::id::new_uuid());
        let mut line = Vec::new();
        let (id_text, topic_text) = (UuidText::new(id), UuidText::new(topic));
        write_relay(
            &mut line,
            &id_text,
            -42,
            &topic_text,
            r#""d\"an\u00e9""#,
            raw.get().as_bytes(),
        );
        let mut p = Packet::server("send").with_from("d\"an\u{e9}");
        p.id = Some(id.to_string());
        p.ts = Some(-42);
        p.topic = Some(topic.to_string());
        p.ex = serde_json::from_str(ex).unwrap();
        // The same JSON value, fields in the same order.
        let back = Packet::decode(line.strip_suffix(b"\n").unwrap(), 8).unwrap();
        assert_eq!(back, p);
        let order = |l: &[u8]| {
            let v: Map<String, Value> = serde_json::from_slice(l).unwrap();
            v.keys().cloned().collect::<Vec<_>>()
        };
        assert_eq!(order(&line), order(&p.to_line()));
        assert_eq!(
            line.len(),
            relay_len(-42, r#""d\"an\u00e9""#, raw.get().as_bytes())
        );
    }

    /// A later `ex` does not spare an earlier one the checks every value
    /// gets: the same values under any other key are refused.
    #[test]
    fn an_overridden_ex_is_checked_like_any_value() {
        for line in [
            r#"{"op":"ping","ex":{"a":1e400},"ex":{}}"#,
            r#"{"op":"ping","ex":"\udc00","ex":null}"#,
            r#"{"op":"send","topic":"t","ex":[1e999],"ex":{"a":1}}"#,
        ] {
            let other = line.replacen("\"ex\"", "\"x\"", 1);
            assert!(Packet::decode(other.as_bytes(), 32).is_err(), "{other}");
            assert!(Packet::decode(line.as_bytes(), 32).is_err(), "{line}");
            assert!(Packet::decode_lazy(line.as_bytes(), 32).is_err(), "{line}");
        }
        // A well-formed earlier `ex` is still replaced by the later one.
        let p = Packet::decode(br#"{"op":"ping","ex":{"a":1},"ex":{"b":2}}"#, 32).unwrap();
        assert_eq!(p.ex.get("b"), Some(&Value::from(2)));
        assert!(!p.ex.contains_key("a"));
    }

    /// An empty `ex` is left out of a relay, as `Packet::server` leaves it
    /// out, and the relay's length says so.
    #[test]
    fn a_relay_of_an_empty_ex_leaves_ex_out() {
        let (id, topic) = (UuidText::new(id::new_uuid()), UuidText::new(id::new_uuid()));
        for ex in ["", "{}", " { } "] {
            let mut line = Vec::new();
            write_relay(&mut line, &id, 1, &topic, "\"dan\"", ex.as_bytes());
            let v: Map<String, Value> = serde_json::from_slice(&line).unwrap();
            assert!(!v.contains_key("ex"), "{}", String::from_utf8_lossy(&line));
            assert_eq!(line.len(), relay_len(1, "\"dan\"", ex.as_bytes()));
            let p = Packet::decode(line.strip_suffix(b"\n").unwrap(), 8).unwrap();
            assert_eq!(p.to_line(), line);
        }
        assert!(!is_empty_ex(br#"{"a":1}"#));
        assert!(!is_empty_ex(b"[]"));
    }

    #[test]
    fn a_relay_is_as_long_as_said() {
        let (id, topic) = (UuidText::new(id::new_uuid()), UuidText::new(id::new_uuid()));
        for ts in [0, 7, -1, 1_763_900_000_078, i64::MIN, i64::MAX] {
            for (from, ex) in [
                ("\"a\"", "{}"),
                (r#""dan\u00e9""#, r#"{"m":"caf\u00e9 \"q\""}"#),
            ] {
                let mut line = b"already there".to_vec();
                write_relay(&mut line, &id, ts, &topic, from, ex.as_bytes());
                assert_eq!(
                    line.len() - 13,
                    relay_len(ts, from, ex.as_bytes()),
                    "{ts} {from}"
                );
            }
        }
    }

    #[test]
    fn a_lazy_ex_is_kept_only_when_it_can_be_relayed() {
        let relayable = |line: &str| {
            let (p, raw) = Packet::decode_lazy(line.as_bytes(), 8)
                .unwrap()
                .into_relayable()
                .unwrap();
            (p.ex.len(), raw.map(|r| r.get().to_owned()))
        };
        assert_eq!(
            relayable(r#"{"op":"send","ex":{ "a" : 1 }}"#),
            (0, Some(r#"{ "a" : 1 }"#.into()))
        );
        assert_eq!(
            relayable(r#"{"op":"send","ex":{"a":1,"for":"x"}}"#),
            (2, None)
        );
        assert_eq!(relayable(r#"{"op":"send","ex":{}}"#), (0, None));
        assert_eq!(relayable(r#"{"op":"send","ex":null}"#), (0, None));
        assert_eq!(relayable(r#"{"op":"send"}"#), (0, None));
        // Only a `send` passes `ex` on; any other op reads it as a map.
        assert_eq!(relayable(r#"{"ex":{"a":1},"op":"meta"}"#), (1, None));
    }

    #[test]
    fn errors_after_id_keep_it() {
        let err = Packet::decode(br#"{"id":"r1","op":5}"#, 32).unwrap_err();
        assert_eq!(err.id.as_deref(), Some("r1"));
    }

    #[test]
    fn depth_ignores_brackets_in_strings() {
        assert_eq!(json_depth(br#"{"a":"[[[[{{{\"]]"}"#), 1);
        assert_eq!(json_depth(br#"{"a":[{"b":[]}]}"#), 4);
    }

    #[test]
    fn encodes_once_with_newline() {
        let line = Packet::server("ack").with("for", "x").to_line();
        assert!(line.ends_with(b"\n"));
        let back = Packet::decode(&line[..line.len() - 1], 32).unwrap();
        assert_eq!(back.op, "ack");
        assert_eq!(back.ex_str("for"), Some("x"));
        assert!(back.id.is_some() && back.ts.is_some());
    }

    proptest! {
        /// The plain path writes what serde writes, escapes or not.
        #[test]
        fn write_str_writes_what_serde_writes(text in "(\\PC|[\"\\\\\u{0}-\u{1f}\u{7f}])*") {
            let mut ours = Vec::new();
            write_str(&mut ours, &text);
            prop_assert_eq!(ours, serde_json::to_vec(&text).unwrap());
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Packet::decode(&bytes, 32);
        }

        #[test]
        fn random_json_never_panics(value in arb_json()) {
            let text = value.to_string();
            match Packet::decode(text.as_bytes(), 8) {
                Ok(p) => prop_assert!(!p.op.is_empty()),
                Err(e) => prop_assert!(!e.message.is_empty()),
            }
        }
    }

    proptest! {
        /// The envelope is read field by field; it must mean what the object
        /// would as a map: the last of duplicate keys wins, others are ignored.
        #[test]
        fn fields_read_as_a_map_would(
            pairs in proptest::collection::vec((arb_key(), arb_json()), 0..8)
        ) {
            let body: Vec<String> = pairs
                .iter()
                .map(|(k, v)| format!("{}:{v}", Value::from(k.as_str())))
                .collect();
            let text = format!("{{{}}}", body.join(","));
            let map: Map<String, Value> = serde_json::from_str(&text).unwrap();
            let envelope: Map<String, Value> = map
                .into_iter()
                .filter(|(k, _)| ["id", "ts", "topic", "op", "from", "ex"].contains(&k.as_str()))
                .collect();
            let canonical = Value::Object(envelope).to_string();
            prop_assert_eq!(
                Packet::decode(text.as_bytes(), 32),
                Packet::decode(canonical.as_bytes(), 32)
            );
        }
    }

    /// The byte-at-a-time scan `json_depth` replaced, as its oracle.
    fn depth_reference(bytes: &[u8]) -> usize {
        let (mut depth, mut max) = (0usize, 0usize);
        let (mut in_string, mut escaped) = (false, false);
        for &b in bytes {
            if in_string {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_string = false;
                }
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'{' | b'[' => {
                    depth += 1;
                    max = max.max(depth);
                }
                b'}' | b']' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        max
    }

    proptest! {
        #[test]
        fn depth_scan_matches_the_plain_scan(
            bytes in proptest::collection::vec(
                prop_oneof![Just(b'"'), Just(b'\\'), Just(b'{'), Just(b'['), Just(b'}'), Just(b']'), any::<u8>()],
                0..256,
            )
        ) {
            prop_assert_eq!(json_depth(&bytes), depth_reference(&bytes));
        }

        #[test]
        fn depth_of_json_matches_the_plain_scan(value in arb_json()) {
            let text = value.to_string();
            prop_assert_eq!(json_depth(text.as_bytes()), depth_reference(text.as_bytes()));
        }
    }

    fn arb_key() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("op".to_string()),
            Just("id".to_string()),
            Just("ts".to_string()),
            Just("ex".to_string()),
            Just("topic".to_string()),
            Just("from".to_string()),
            "[a-z]{1,4}"
        ]
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "[a-z]{0,8}".prop_map(Value::from),
            // Escapes and non-ASCII, so the skipped-value path meets them.
            "[a-z\\\\\"\u{e9}\u{1F600}\u{0001}]{0,6}".prop_map(Value::from),
            prop_oneof![
                Just("op"),
                Just("id"),
                Just("ts"),
                Just("ex"),
                Just("topic"),
                Just("from")
            ]
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(12, 64, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::vec((arb_key(), inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }
}
