//! The event every backend yields.

use std::fmt;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde_json::Value;

/// One event of a stream.
///
/// Every field is reference-counted so that one event can be fanned out to
/// many clients without copying its payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Position of the event in its backend's stream. A client that
    /// reconnects with this value as `Last-Event-ID` continues after it.
    pub id: Option<Arc<str>>,
    /// Event name (SSE `event:` field). `None` means the default, `message`.
    pub name: Option<Arc<str>>,
    /// The payload.
    pub data: Data,
    /// Name of the backend the event came from, as configured. The gateway
    /// stamps it when it merges backends; backends may leave it empty.
    pub source: Arc<str>,
    /// The bytes encoders made of this event, shared by every clone of it:
    /// a key's clients all get clones of one event, so each wire form is
    /// written once, not once per client. Empty (and never filled) unless
    /// the event is [`shared`](Self::shared). Code that changes the id, the
    /// name or the data of an event that may be shared resets this to
    /// `Encodings::default()` (as [`with_id`](Self::with_id) and
    /// [`with_name`](Self::with_name) do), or its clients would get the
    /// bytes of the event as it was.
    pub encodings: Encodings,
}

impl Event {
    /// An event with a payload and nothing else.
    pub fn new(data: Data) -> Self {
        Self {
            id: None,
            name: None,
            data,
            // The empty `Arc<str>` is a static one: no allocation per event.
            source: Arc::default(),
            encodings: Encodings::default(),
        }
    }

    /// The event, made ready to be cloned to many clients: its clones share
    /// the bytes an encoder makes of it (see [`Encodings`]).
    pub fn shared(mut self) -> Self {
        self.encodings = Encodings(Some(Arc::default()));
        self
    }

    /// Sets the id.
    pub fn with_id(mut self, id: impl Into<Arc<str>>) -> Self {
        self.id = Some(id.into());
        self.encodings = Encodings::default();
        self
    }

    /// Sets the event name.
    pub fn with_name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = Some(name.into());
        self.encodings = Encodings::default();
        self
    }

    /// Sets the source backend's name.
    pub fn with_source(mut self, source: Arc<str>) -> Self {
        self.source = source;
        self
    }
}

/// Room for the wire forms of one event, kept once for all of its clones.
///
/// An encoder that writes the same bytes for every client of an event (its
/// form depends on the event alone, not on the client) asks for them here,
/// by a slot of its own choosing, and the first client's encoding serves
/// the rest. It never changes what an event is: two events that differ only
/// here are equal.
#[derive(Clone, Default)]
pub struct Encodings(Option<Arc<[OnceLock<Bytes>; Encodings::SLOTS]>>);

impl Encodings {
    /// How many wire forms an event keeps.
    pub const SLOTS: usize = 4;

    /// The bytes in `slot`, made by `encode` if no clone made them yet;
    /// `None` for an event that is not shared (or a slot out of range):
    /// the caller encodes it itself.
    pub fn get_or_encode(&self, slot: usize, encode: impl FnOnce() -> Bytes) -> Option<Bytes> {
        let slot = self.0.as_ref()?.get(slot)?;
        Some(slot.get_or_init(encode).clone())
    }

    /// Whether clones of the event share their encodings.
    pub fn is_shared(&self) -> bool {
        self.0.is_some()
    }
}

impl PartialEq for Encodings {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Encodings {}

impl fmt::Debug for Encodings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let filled = self
            .0
            .as_ref()
            .map(|slots| slots.iter().filter(|s| s.get().is_some()).count());
        match filled {
            Some(filled) => write!(f, "Encodings(shared, {filled} made)"),
            None => f.write_str("Encodings(none)"),
        }
    }
}

/// An event's payload: compact JSON, or text from an upstream that does not
/// speak JSON.
///
/// JSON is kept serialized (compact, so it never contains a line break) and
/// shared, because every encoder writes it as text and fan-out writes the same
/// payload to many clients.
#[derive(Clone, PartialEq, Eq)]
pub struct Data(Repr);

#[derive(Clone, PartialEq, Eq)]
enum Repr {
    Json(Arc<str>),
    Text(Arc<str>),
}

impl Data {
    /// A JSON payload.
    pub fn json(value: &Value) -> Self {
        // Serializing a `Value` cannot fail: its map keys are always strings.
        Self(Repr::Json(Arc::from(value.to_string())))
    }

    /// A JSON payload from compact JSON text this crate wrote itself (no
    /// parse, no re-serialization: for backends that make events fast).
    pub(crate) fn json_text(text: impl AsRef<str>) -> Self {
        let text = text.as_ref();
        debug_assert!(crate::json::check(text.as_bytes()).is_ok(), "{text}");
        debug_assert!(!text.contains(['\r', '\n']), "not compact: {text}");
        Self(Repr::Json(Arc::from(text)))
    }

    /// A JSON payload from text, compacted: the white space between tokens
    /// goes, numbers and escapes stay as written. No `Value` is built, so
    /// an upstream's line costs its own size whatever its shape.
    pub fn parse_json(text: &str) -> Result<Self, serde_json::Error> {
        crate::json::compact(text.as_bytes()).map(Self::json_text)
    }

    /// A text payload, written as is in SSE (line breaks become several
    /// `data:` lines) and as a JSON string in NDJSON.
    pub fn text(text: impl Into<Arc<str>>) -> Self {
        Self(Repr::Text(text.into()))
    }

    /// The payload as written in an SSE `data` field: compact JSON, or the text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Json(s) | Repr::Text(s) => s,
        }
    }

    /// Whether the payload is JSON (as opposed to text).
    pub fn is_json(&self) -> bool {
        matches!(self.0, Repr::Json(_))
    }

    /// The payload as a JSON value: parsed JSON, or a JSON string for text.
    pub fn to_value(&self) -> Value {
        match &self.0 {
            Repr::Json(s) => serde_json::from_str(s).unwrap_or(Value::Null),
            Repr::Text(s) => Value::String(s.to_string()),
        }
    }
}

impl From<Value> for Data {
    fn from(value: Value) -> Self {
        Self::json(&value)
    }
}

impl fmt::Debug for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Json(s) => write!(f, "Json({s})"),
            Repr::Text(s) => write!(f, "Text({s:?})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_is_compact_and_single_line() {
        let data = Data::parse_json("{\n  \"a\" : [1, 2],\n  \"b\": \"x\\ny\"\n}").unwrap();
        assert_eq!(data.as_str(), r#"{"a":[1,2],"b":"x\ny"}"#);
        assert!(!data.as_str().contains('\n'));
        assert!(data.is_json());
    }

    #[test]
    fn parsed_json_keeps_its_numbers_and_escapes() {
        // Through a `Value` the number became 1.2345678901234568e22 and
        // the escape an é.
        let data = Data::parse_json("[12345678901234567890123, \"\\u00e9\"]").unwrap();
        assert_eq!(data.as_str(), r#"[12345678901234567890123,"\u00e9"]"#);
        assert!(Data::parse_json("[1,]").is_err());
    }

    #[test]
    fn text_round_trips_as_json_string() {
        let data = Data::text("line\r\nbreak");
        assert!(!data.is_json());
        assert_eq!(data.to_value(), json!("line\r\nbreak"));
    }

    #[test]
    fn key_order_is_kept() {
        let data = Data::json(&json!({"event": "start", "message": "streaming begin"}));
        assert_eq!(
            data.as_str(),
            r#"{"event":"start","message":"streaming begin"}"#
        );
    }
}
