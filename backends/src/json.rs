//! JSON kept as text: checked and compacted without building a tree.
//!
//! A `serde_json::Value` costs 72 bytes per element (with `preserve_order`,
//! which the workspace enables), so 1 MiB of `[0,0,…]` is a 36 MiB tree and
//! an object of many short keys about 13 times its size. Request bodies,
//! published events and upstream lines are only ever passed on as text, so
//! they are checked and compacted here in one pass each, holding nothing
//! but the text.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Checks that `bytes` is one JSON value, exactly as parsing it into a
/// `serde_json::Value` would (UTF-8 in strings, at most 128 levels of
/// nesting, numbers in range), and with the same errors; nothing is built.
pub fn check(bytes: &[u8]) -> Result<(), serde_json::Error> {
    serde_json::from_slice::<Checked>(bytes).map(|_| ())
}

/// The JSON `text` without the white space between tokens: one line, the
/// same value; an error when it is not JSON, as [`check`] gives it.
///
/// Unlike a round trip through `Value`, numbers and escapes stay as they
/// were written (no precision lost on large numbers), and so does a key
/// given twice.
pub fn compact(text: &[u8]) -> Result<String, serde_json::Error> {
    check(text)?;
    let mut out = Vec::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    // Byte by byte: every byte of a multi-byte character is above ASCII,
    // so none is taken for a quote, a backslash or white space.
    for &b in text {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            continue;
        }
        out.push(b);
    }
    // Checked JSON is UTF-8, and whole characters were kept.
    String::from_utf8(out).map_err(de::Error::custom)
}

/// What [`check`] deserializes: every value visited, none kept. Going
/// through `deserialize_any` (not `IgnoredAny`, which skips strings
/// unchecked and ignores the nesting limit) is what makes it accept exactly
/// what `Value` accepts.
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(Checked)
    }
}

impl<'de> Visitor<'de> for Checked {
    type Value = Self;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        while map.next_entry::<Checked, Checked>()?.is_some() {}
        Ok(self)
    }
}

/// What [`object`] found at the top of a JSON text.
#[derive(Debug)]
pub(crate) enum Shape<T> {
    /// An object, and what its fields made.
    Object(T),
    Null,
    /// Any other value (skipped, not built).
    Other,
}

/// Reads the JSON `text` as an object whose fields `fields` visits (its
/// `visit_map`, keys best read as [`Key`] and values as [`Scalar`],
/// `&RawValue` or `IgnoredAny`); any other value is skipped, not built.
/// For bodies and lines a backend takes a few fields of.
pub(crate) fn object<'de, V: Visitor<'de>>(
    text: &'de str,
    fields: V,
) -> Result<Shape<V::Value>, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let shape = (&mut deserializer).deserialize_any(ObjectOr(fields))?;
    deserializer.end()?;
    Ok(shape)
}

struct ObjectOr<V>(V);

impl<'de, V: Visitor<'de>> Visitor<'de> for ObjectOr<V> {
    type Value = Shape<V::Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.expecting(f)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.0.visit_map(map).map(Shape::Object)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Shape::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Shape::Other)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Shape::Other)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Shape::Other)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Shape::Other)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Shape::Other)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Shape::Other)
    }
}

/// An object's key, borrowed from the text unless it has escapes.
pub(crate) struct Key<'a>(pub Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_str(StrVisitor)
            .map(|key| Key(key.unwrap_or_default()))
    }
}

/// A value as far as names and ids go: a string (borrowed unless it has
/// escapes), a number, null, or something else, skipped, not built.
#[derive(Debug, PartialEq)]
pub(crate) enum Scalar<'a> {
    String(Cow<'a, str>),
    Number(serde_json::Number),
    Null,
    Other,
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::String(Cow::Borrowed(s)))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Scalar::String(Cow::Owned(s.to_string())))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
        Ok(Scalar::Number(n.into()))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
        Ok(Scalar::Number(n.into()))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Self::Value, E> {
        Ok(serde_json::Number::from_f64(n).map_or(Scalar::Other, Scalar::Number))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
}

/// A string, borrowed unless it has escapes (`None`: not a string).
struct StrVisitor;

impl<'de> Visitor<'de> for StrVisitor {
    type Value = Option<Cow<'de, str>>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Borrowed(s)))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Owned(s.to_string())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// Whether `Value` takes it, and its error if not.
    fn as_value(text: &[u8]) -> Result<(), String> {
        serde_json::from_slice::<Value>(text)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn check_accepts_and_refuses_what_value_does_with_its_errors() {
        let deep = |n| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let cases: Vec<Vec<u8>> = vec![
            br#"{"a": [1, -2, 3.5e10, true, null, "x\n\u00e9"], "b": {}}"#.to_vec(),
            b" 7 ".to_vec(),
            br#"{"a": 1, "a": 2}"#.to_vec(),
            deep(128).into_bytes(),
            // Refused: too deep, bad UTF-8 in a string and in a key, a raw
            // control character, trailing text, a number out of range.
            deep(129).into_bytes(),
            b"[\"\xff\"]".to_vec(),
            b"{\"\xc3\":1}".to_vec(),
            b"\"a\nb\"".to_vec(),
            b"[1] x".to_vec(),
            b"1e999".to_vec(),
            b"{\"a\" 1}".to_vec(),
            b"".to_vec(),
        ];
        for text in cases {
            assert_eq!(
                check(&text).map_err(|e| e.to_string()),
                as_value(&text),
                "{}",
                String::from_utf8_lossy(&text)
            );
        }
    }

    #[test]
    fn compact_drops_only_the_space_between_tokens() {
        let text = "{\n  \"a\" : [1, 2.50, 1e2],\r\n\t\"b c\": \"x \\\" \\n y\", \"é\": {} }\n";
        let compacted = compact(text.as_bytes()).unwrap();
        assert_eq!(compacted, r#"{"a":[1,2.50,1e2],"b c":"x \" \n y","é":{}}"#);
        assert_eq!(
            serde_json::from_str::<Value>(&compacted).unwrap(),
            serde_json::from_str::<Value>(text).unwrap()
        );
        // Precision is not lost to a round trip through f64.
        assert_eq!(
            compact(b"123456789012345678901234567890").unwrap(),
            "123456789012345678901234567890"
        );
        assert!(compact(b"[1,").is_err());
        assert!(compact(b"not json").is_err());
    }
}
