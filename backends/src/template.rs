//! A JSON body made from parts of a request's JSON body: the `http`
//! backend's `body` (an LLM API's request from a client's `{"prompt": …}`).
//!
//! The template is any JSON value. In its strings, `{{/a/b}}` is a
//! placeholder: the value at that JSON pointer (RFC 6901) of the request's
//! body. A string that is one placeholder and nothing else becomes that
//! value, whatever its type (a number stays a number, an array an array); a
//! placeholder inside a longer string is replaced by the value's text (a
//! string's characters, anything else as compact JSON). Filled in one pass:
//! what a value holds is never read as a placeholder. `{{` that does not
//! start a pointer (`{{/…}}`, or `{{}}` for the whole body) is text.
//!
//! Looking a pointer up never builds the body as a tree: each step reads
//! one level of the text (its keys, or its elements, as borrowed slices), so
//! a request costs a small multiple of its body at most.

use std::collections::HashMap;

use serde_json::Value;
use serde_json::value::RawValue;

/// Most placeholders in one template: each may copy the whole body.
pub const MAX_PLACEHOLDERS: usize = 32;

/// A checked template (see the module).
#[derive(Clone, Debug, PartialEq)]
pub struct BodyTemplate {
    value: Value,
}

impl BodyTemplate {
    /// Checks `value`'s placeholders: at most [`MAX_PLACEHOLDERS`].
    pub fn new(value: Value) -> Result<Self, String> {
        let mut count = 0;
        visit_strings(&value, &mut |s| {
            count += pieces(s).filter(|p| p.is_pointer()).count()
        });
        if count > MAX_PLACEHOLDERS {
            return Err(format!(
                "has {count} placeholders; at most {MAX_PLACEHOLDERS}"
            ));
        }
        Ok(Self { value })
    }

    /// The template filled from `body` (the request's JSON text, `None`
    /// without one); the error names the first pointer the body lacks.
    pub fn fill(&self, body: Option<&str>) -> Result<Value, String> {
        fill(&self.value, body)
    }
}

fn visit_strings(value: &Value, f: &mut impl FnMut(&str)) {
    match value {
        Value::String(s) => f(s),
        Value::Array(items) => items.iter().for_each(|v| visit_strings(v, f)),
        Value::Object(map) => map.values().for_each(|v| visit_strings(v, f)),
        _ => {}
    }
}

fn fill(value: &Value, body: Option<&str>) -> Result<Value, String> {
    Ok(match value {
        Value::String(s) => fill_string(s, body)?,
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| fill(v, body))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), fill(v, body)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

fn fill_string(s: &str, body: Option<&str>) -> Result<Value, String> {
    let parts: Vec<Piece<'_>> = pieces(s).collect();
    if let [Piece::Pointer(pointer)] = parts.as_slice() {
        let raw = lookup(body, pointer)?;
        return serde_json::from_str(raw).map_err(|e| e.to_string());
    }
    if !parts.iter().any(Piece::is_pointer) {
        return Ok(Value::String(s.to_string()));
    }
    let mut out = String::with_capacity(s.len());
    for part in parts {
        match part {
            Piece::Text(text) => out.push_str(text),
            Piece::Pointer(pointer) => {
                let raw = lookup(body, pointer)?;
                match serde_json::from_str::<String>(raw) {
                    Ok(text) => out.push_str(&text),
                    Err(_) => out.push_str(
                        &crate::json::compact(raw.as_bytes()).map_err(|e| e.to_string())?,
                    ),
                }
            }
        }
    }
    Ok(Value::String(out))
}

#[derive(Debug, PartialEq)]
enum Piece<'a> {
    Text(&'a str),
    /// The pointer, without its braces.
    Pointer(&'a str),
}

impl Piece<'_> {
    fn is_pointer(&self) -> bool {
        matches!(self, Piece::Pointer(_))
    }
}

/// `s` cut into text and placeholders, left to right.
fn pieces(s: &str) -> impl Iterator<Item = Piece<'_>> {
    let mut rest = s;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut from = 0;
        while let Some(at) = rest[from..].find("{{").map(|i| i + from) {
            let after = &rest[at + 2..];
            let pointer = after
                .find("}}")
                .map(|end| &after[..end])
                .filter(|p| p.is_empty() || p.starts_with('/'));
            match pointer {
                Some(pointer) if at == 0 => {
                    rest = &after[pointer.len() + 2..];
                    return Some(Piece::Pointer(pointer));
                }
                Some(_) => {
                    let text = &rest[..at];
                    rest = &rest[at..];
                    return Some(Piece::Text(text));
                }
                None => from = at + 2,
            }
        }
        let text = rest;
        rest = "";
        Some(Piece::Text(text))
    })
}

/// The raw JSON at `pointer` in `body`.
fn lookup<'b>(body: Option<&'b str>, pointer: &str) -> Result<&'b str, String> {
    let missing = || {
        if pointer.is_empty() {
            "the request has no JSON body".to_string()
        } else {
            format!("the request's JSON body has nothing at {pointer}")
        }
    };
    let mut at: &RawValue = match body {
        Some(body) => serde_json::from_str(body).map_err(|e| e.to_string())?,
        None => return Err(missing()),
    };
    if pointer.is_empty() {
        return Ok(at.get());
    }
    for token in pointer[1..].split('/') {
        let token = token.replace("~1", "/").replace("~0", "~");
        let text = at.get();
        let next = match text.as_bytes().first() {
            Some(b'{') => serde_json::from_str::<HashMap<String, &RawValue>>(text)
                .ok()
                .and_then(|map| map.get(&token).copied()),
            Some(b'[') => match token.parse::<usize>() {
                Ok(i) if token == "0" || !token.starts_with('0') => {
                    serde_json::from_str::<Vec<&RawValue>>(text)
                        .ok()
                        .and_then(|items| items.get(i).copied())
                }
                _ => None,
            },
            _ => None,
        };
        at = next.ok_or_else(missing)?;
    }
    Ok(at.get())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn filled(template: Value, body: &str) -> Result<Value, String> {
        BodyTemplate::new(template)
            .expect("a template")
            .fill(Some(body))
    }

    #[test]
    fn a_whole_placeholder_keeps_the_type_and_text_ones_are_text() {
        let template = json!({
            "model": "m", "stream": true,
            "messages": [{"role": "user", "content": "{{/prompt}}"}],
            "max_tokens": "{{/limits/tokens}}",
            "note": "asked {{/prompt}} with {{/limits}}",
            "whole": "{{}}",
        });
        let body = r#"{"prompt": "hi {{/x}}", "limits": {"tokens": 7}, "x": 1}"#;
        assert_eq!(
            filled(template, body).unwrap(),
            json!({
                "model": "m", "stream": true,
                "messages": [{"role": "user", "content": "hi {{/x}}"}],
                "max_tokens": 7,
                "note": "asked hi {{/x}} with {\"tokens\":7}",
                "whole": {"prompt": "hi {{/x}}", "limits": {"tokens": 7}, "x": 1},
            })
        );
    }

    #[test]
    fn pointers_follow_rfc_6901() {
        let body = r#"{"a/b": {"m~n": [10, 20]}, "": 3}"#;
        assert_eq!(filled(json!("{{/a~1b/m~0n/1}}"), body).unwrap(), json!(20));
        assert_eq!(filled(json!("{{/}}"), body).unwrap(), json!(3));
        assert!(filled(json!("{{/a~1b/m~0n/01}}"), body).is_err());
        assert!(filled(json!("{{/a~1b/m~0n/2}}"), body).is_err());
    }

    #[test]
    fn what_is_missing_is_named() {
        let t = BodyTemplate::new(json!({"q": "{{/prompt}}"})).unwrap();
        assert_eq!(
            t.fill(Some(r#"{"promt": "x"}"#)).unwrap_err(),
            "the request's JSON body has nothing at /prompt"
        );
        assert_eq!(
            t.fill(None).unwrap_err(),
            "the request's JSON body has nothing at /prompt"
        );
    }

    #[test]
    fn braces_that_are_no_pointer_are_text() {
        for s in ["{{", "}}", "{{x}}", "a {{ b }} c", "{{/open", "{ {/x}}"] {
            assert_eq!(filled(json!(s), "{}").unwrap(), json!(s), "{s}");
        }
        assert_eq!(
            filled(json!("{{{{/x}}"), r#"{"x":"y"}"#).unwrap(),
            json!("{{y")
        );
    }

    #[test]
    fn placeholders_are_bounded() {
        let many: Vec<Value> = (0..=MAX_PLACEHOLDERS).map(|_| json!("{{/x}}")).collect();
        assert!(BodyTemplate::new(Value::Array(many)).is_err());
    }
}
