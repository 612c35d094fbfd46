//! `demo`: the reference stream.
//!
//! By default it reproduces the stream of the system the gateway replaces,
//! object for object and pause for pause:
//!
//! ```text
//! {"event":"start","message":"streaming begin"}      (then 0.5 s)
//! {"event":"data","index":0,"token":"Hello"}          (then 0.3 s, after each token)
//! {"event":"data","index":1,"token":" "}
//! {"event":"data","index":2,"token":"World"}
//! {"event":"data","index":3,"token":"!"}
//! {"event":"end","message":"done"}
//! ```
//!
//! Event ids count from `0` (start) to `n + 1` (end), so a client that resumes
//! with `Last-Event-ID: k` gets the events after `k`, and one that resumes after
//! the end is told the stream is finished. A request body `{"text": "..."}`
//! streams that text's tokens (runs of letters and digits, runs of white space,
//! and single other characters) instead of the configured ones.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::json::{self, Key, Scalar, Shape};
use crate::problem::Problem;
use crate::{Backend, BackendError, Data, Event, EventStream, JsonBody, RequestContext};

/// Configuration of the `demo` backend. Every field has a default, and the
/// defaults are the reference stream.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DemoConfig {
    /// Tokens streamed when the request carries no text.
    /// Default: `["Hello", " ", "World", "!"]`.
    pub tokens: Vec<String>,
    /// Pause after the `start` event. Default: `500ms`.
    #[serde(with = "humantime_serde")]
    pub start_pause: Duration,
    /// Pause after each token. Default: `300ms`.
    #[serde(with = "humantime_serde")]
    pub token_pause: Duration,
    /// `message` of the `start` event. Default: `streaming begin`.
    pub start_message: String,
    /// `message` of the `end` event. Default: `done`.
    pub end_message: String,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            tokens: ["Hello", " ", "World", "!"].map(String::from).to_vec(),
            start_pause: Duration::from_millis(500),
            token_pause: Duration::from_millis(300),
            start_message: "streaming begin".into(),
            end_message: "done".into(),
        }
    }
}

/// Pauses beyond this are surely a typo (`5000s` for `5000ms`).
const MAX_PAUSE: Duration = Duration::from_secs(3600);

impl DemoConfig {
    pub(crate) fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        for (key, pause) in [
            ("start_pause", self.start_pause),
            ("token_pause", self.token_pause),
        ] {
            if pause > MAX_PAUSE {
                problems.push(Problem::new(key, "must be at most 1h"));
            }
        }
        problems
    }
}

/// The reference stream, or a text's tokens, with pauses.
#[derive(Debug)]
pub struct Demo {
    config: Arc<DemoConfig>,
}

impl Demo {
    /// A demo backend with its configuration.
    pub fn new(config: DemoConfig) -> Self {
        Self {
            config: Arc::new(config),
        }
    }
}

#[async_trait]
impl Backend for Demo {
    async fn open(&self, ctx: &RequestContext) -> Result<EventStream, BackendError> {
        let text = match &ctx.body {
            None => None,
            Some(body) => Text::of(body)?,
        };
        let count = match &text {
            None => self.config.tokens.len() as u64,
            Some(text) => tokens(text.as_str()).count() as u64,
        };
        let end_id = count + 1;
        let first = match ctx.last_event_id.as_deref() {
            None => 0,
            Some(last) => match last.trim().parse::<u64>() {
                Ok(last) if last >= end_id => return Err(BackendError::finished()),
                Ok(last) => last + 1,
                Err(_) => {
                    return Err(BackendError::bad_request(format!(
                        "Last-Event-ID {} is not an id of this stream (0 to {end_id})",
                        crate::Shown(last)
                    )));
                }
            },
        };
        // Where the token of event `first` starts: the tokens before it are
        // skipped by scanning, not made.
        let at = match &text {
            Some(text) => {
                let before = first.saturating_sub(1) as usize;
                tokens(text.as_str()).take(before).map(str::len).sum()
            }
            None => 0,
        };
        let cursor = Cursor {
            config: Arc::clone(&self.config),
            text,
            at,
            id: first,
            end_id,
        };
        let events = futures::stream::unfold(cursor, move |mut cursor| async move {
            let id = cursor.id;
            let (event, pause) = cursor.next()?;
            // A resumed stream sends its first event at once.
            if id != first {
                if pause.is_zero() {
                    // Tokens without pauses go out as fast as the client
                    // reads; other tasks still get their turn.
                    tokio::task::coop::consume_budget().await;
                } else {
                    tokio::time::sleep(pause).await;
                }
            }
            Some((Ok(event), cursor))
        });
        Ok(events.boxed())
    }
}

/// A stream's position: the event to make next, and where its token is.
struct Cursor {
    config: Arc<DemoConfig>,
    /// The request's text; `None` streams the configured tokens.
    text: Option<Text>,
    /// Where the next token starts in `text`.
    at: usize,
    /// The id of the next event.
    id: u64,
    end_id: u64,
}

impl Cursor {
    /// The next event, and the pause that precedes it (the pause that
    /// follows the event before it in the reference); `None` after the end.
    fn next(&mut self) -> Option<(Event, Duration)> {
        let id = self.id;
        if id > self.end_id {
            return None;
        }
        self.id += 1;
        let pause = match id {
            0 => Duration::ZERO,
            1 => self.config.start_pause,
            _ => self.config.token_pause,
        };
        let (name, data) = if id == 0 {
            ("start", message("start", &self.config.start_message))
        } else if id == self.end_id {
            ("end", message("end", &self.config.end_message))
        } else {
            let index = id - 1;
            let token = match &self.text {
                Some(text) => {
                    let rest = text.as_str().get(self.at..).unwrap_or("");
                    let token = tokens(rest).next().unwrap_or("");
                    self.at += token.len();
                    token
                }
                None => self
                    .config
                    .tokens
                    .get(index as usize)
                    .map_or("", String::as_str),
            };
            (
                "data",
                json(&TokenEvent {
                    event: "data",
                    index,
                    token,
                }),
            )
        };
        let event = Event::new(data).with_id(id.to_string()).with_name(name);
        Some((event, pause))
    }
}

/// `{"event": "data", "index": 0, "token": "Hello"}`.
#[derive(Serialize)]
struct TokenEvent<'a> {
    event: &'static str,
    index: u64,
    token: &'a str,
}

/// `{"event": "start", "message": "streaming begin"}`.
#[derive(Serialize)]
struct MessageEvent<'a> {
    event: &'static str,
    message: &'a str,
}

fn message(event: &'static str, message: &str) -> Data {
    json(&MessageEvent { event, message })
}

/// An event's data written straight from its fields.
fn json(fields: &impl Serialize) -> Data {
    // Strings and numbers always serialize.
    Data::json_text(serde_json::to_string(fields).unwrap_or_default())
}

/// A request's text, where the stream reads its tokens from: the body
/// itself when the JSON string has no escapes (the common case: nothing is
/// copied), or the text unescaped once.
enum Text {
    Body(JsonBody, Range<usize>),
    Unescaped(Box<str>),
}

impl Text {
    /// The text a body asks for: its `text`, or `None` for the configured
    /// tokens (`null`, `{}`); the same errors, in the same order, as ever.
    fn of(body: &JsonBody) -> Result<Option<Self>, BackendError> {
        let shape = json::object(body.as_str(), Fields)
            .map_err(|e| BackendError::bad_request(format!("the request body: {e}")))?;
        let text = match shape {
            Shape::Null => return Ok(None),
            Shape::Other => return Err(BackendError::bad_request(NOT_AN_OBJECT)),
            Shape::Object(Err(unknown)) => {
                return Err(BackendError::bad_request(format!(
                    "unknown field `{unknown}` in the request body; expected {{\"text\": \"...\"}}"
                )));
            }
            Shape::Object(Ok(None)) => return Ok(None),
            Shape::Object(Ok(Some(Scalar::String(text)))) => text,
            Shape::Object(Ok(Some(_))) => {
                return Err(BackendError::bad_request(
                    "`text` in the request body must be a string",
                ));
            }
        };
        let text = match text {
            Cow::Owned(text) => return Ok(Some(Self::Unescaped(text.into_boxed_str()))),
            Cow::Borrowed(text) => text,
        };
        let whole = body.as_str();
        let start = (text.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize);
        let range = start..start + text.len();
        // It is a part of the body: serde_json borrows from its input.
        Ok(Some(if whole.get(range.clone()) == Some(text) {
            Self::Body(body.clone(), range)
        } else {
            Self::Unescaped(text.into())
        }))
    }

    fn as_str(&self) -> &str {
        match self {
            Self::Body(body, range) => body.as_str().get(range.clone()).unwrap_or(""),
            Self::Unescaped(text) => text,
        }
    }
}

const NOT_AN_OBJECT: &str = "the request body must be a JSON object like {\"text\": \"...\"}";

/// The fields of a body's object: the value of `text` (the last, if given
/// twice), or the first unknown field, which outweighs it.
struct Fields;

impl<'de> Visitor<'de> for Fields {
    type Value = Result<Option<Scalar<'de>>, String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(r#"{"text": "..."}"#)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut text = None;
        while let Some(Key(key)) = map.next_key()? {
            if key == "text" {
                text = Some(map.next_value()?);
            } else {
                // The rest is skipped.
                map.next_value::<IgnoredAny>()?;
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                return Ok(Err(key.into_owned()));
            }
        }
        Ok(Ok(text))
    }
}

/// The tokens of a text, made as they are read: runs of letters and digits,
/// runs of white space, and single other characters. `"Hello World!"` gives
/// `"Hello"`, `" "`, `"World"`, `"!"`. Each is a slice of the text: counting
/// or skipping them allocates nothing.
pub fn tokens(text: &str) -> Tokens<'_> {
    Tokens { rest: text }
}

/// The iterator of [`tokens`].
#[derive(Clone, Debug)]
pub struct Tokens<'a> {
    rest: &'a str,
}

impl<'a> Iterator for Tokens<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let end = token_end(self.rest)?;
        let (token, rest) = self.rest.split_at(end);
        self.rest = rest;
        Some(token)
    }

    fn count(self) -> usize {
        // One pass, no slicing: a token starts wherever the class changes,
        // and at every character of the `Other` class.
        let (mut at, mut n, mut last) = (0, 0, None);
        while let Some((class, width)) = class_at(self.rest, at) {
            if class == Class::Other || last != Some(class) {
                n += 1;
            }
            last = Some(class);
            at += width;
        }
        n
    }
}

#[derive(PartialEq, Clone, Copy)]
enum Class {
    Word,
    Space,
    Other,
}

/// The class of the character at byte `at` of `text`, and its width;
/// `None` at the end. ASCII, the common case, is classified byte by byte,
/// as `char`'s own methods would (its white space is tab to carriage
/// return, and space).
fn class_at(text: &str, at: usize) -> Option<(Class, usize)> {
    let b = *text.as_bytes().get(at)?;
    if b.is_ascii() {
        let class = if b.is_ascii_alphanumeric() {
            Class::Word
        } else if b == b' ' || (b'\t'..=b'\r').contains(&b) {
            Class::Space
        } else {
            Class::Other
        };
        return Some((class, 1));
    }
    let c = text.get(at..)?.chars().next()?;
    let class = if c.is_alphanumeric() {
        Class::Word
    } else if c.is_whitespace() {
        Class::Space
    } else {
        Class::Other
    };
    Some((class, c.len_utf8()))
}

/// Where the first token of `text` ends; `None` for an empty text.
fn token_end(text: &str) -> Option<usize> {
    let (this, mut end) = class_at(text, 0)?;
    if this != Class::Other {
        while let Some((class, width)) = class_at(text, end) {
            if class != this {
                break;
            }
            end += width;
        }
    }
    Some(end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use tokio::time::Instant;

    fn ctx(body: Option<Value>, last: Option<&str>) -> RequestContext {
        RequestContext {
            body: body.map(|b| b.to_string().parse().unwrap()),
            last_event_id: last.map(String::from),
            ..RequestContext::default()
        }
    }

    async fn collect(demo: &Demo, ctx: &RequestContext) -> Vec<(String, Value, Duration)> {
        let start = Instant::now();
        let stream = demo.open(ctx).await.unwrap();
        stream
            .map(|e| {
                let e = e.unwrap();
                (
                    e.id.unwrap().to_string(),
                    e.data.to_value(),
                    start.elapsed(),
                )
            })
            .collect()
            .await
    }

    #[tokio::test(start_paused = true)]
    async fn default_is_the_reference_stream_with_its_pauses() {
        let demo = Demo::new(DemoConfig::default());
        let got = collect(&demo, &ctx(None, None)).await;
        let ms = |n| Duration::from_millis(n);
        let expected = vec![
            (
                "0",
                json!({"event":"start","message":"streaming begin"}),
                ms(0),
            ),
            (
                "1",
                json!({"event":"data","index":0,"token":"Hello"}),
                ms(500),
            ),
            ("2", json!({"event":"data","index":1,"token":" "}), ms(800)),
            (
                "3",
                json!({"event":"data","index":2,"token":"World"}),
                ms(1100),
            ),
            ("4", json!({"event":"data","index":3,"token":"!"}), ms(1400)),
            ("5", json!({"event":"end","message":"done"}), ms(1700)),
        ];
        assert_eq!(got.len(), expected.len());
        for ((id, data, at), (eid, edata, eat)) in got.into_iter().zip(expected) {
            assert_eq!((id.as_str(), &data), (eid, &edata));
            assert!(
                at >= eat && at < eat + ms(5),
                "event {id} at {at:?}, expected {eat:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn resumes_after_last_event_id_at_once() {
        let demo = Demo::new(DemoConfig::default());
        let got = collect(&demo, &ctx(None, Some("2"))).await;
        let ids: Vec<_> = got.iter().map(|(id, _, _)| id.as_str()).collect();
        assert_eq!(ids, ["3", "4", "5"]);
        assert!(got[0].2 < Duration::from_millis(1));
    }

    #[tokio::test]
    async fn resuming_after_the_end_is_finished_and_garbage_is_bad_request() {
        let demo = Demo::new(DemoConfig::default());
        let err = demo.open(&ctx(None, Some("5"))).await.err().unwrap();
        assert_eq!(err.kind, crate::ErrorKind::Finished);
        let err = demo.open(&ctx(None, Some("abc"))).await.err().unwrap();
        assert_eq!(err.kind, crate::ErrorKind::BadRequest);
    }

    #[tokio::test(start_paused = true)]
    async fn body_text_replaces_tokens() {
        let demo = Demo::new(DemoConfig::default());
        let got = collect(&demo, &ctx(Some(json!({"text": "Hi, you"})), None)).await;
        let tokens: Vec<_> = got
            .iter()
            .filter_map(|(_, d, _)| d.get("token").and_then(Value::as_str).map(String::from))
            .collect();
        assert_eq!(tokens, ["Hi", ",", " ", "you"]);
    }

    #[tokio::test]
    async fn bad_bodies_are_refused_with_the_first_reason() {
        let demo = Demo::new(DemoConfig::default());
        let object = "the request body must be a JSON object like {\"text\": \"...\"}";
        for (body, message) in [
            (
                json!({"text": 1}),
                "`text` in the request body must be a string",
            ),
            (
                json!({"text": null}),
                "`text` in the request body must be a string",
            ),
            (
                json!({"txt": "a"}),
                "unknown field `txt` in the request body; expected {\"text\": \"...\"}",
            ),
            // An unknown field outweighs a bad `text`, wherever it stands.
            (
                json!({"text": [1], "x": {"y": 2}, "z": 3}),
                "unknown field `x` in the request body; expected {\"text\": \"...\"}",
            ),
            (json!([1]), object),
            (json!("text"), object),
            (json!(7), object),
            (json!(true), object),
        ] {
            let err = demo
                .open(&ctx(Some(body.clone()), None))
                .await
                .err()
                .unwrap();
            assert_eq!(err.kind, crate::ErrorKind::BadRequest, "{body}");
            assert_eq!(err.message, message, "{body}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn null_and_empty_bodies_stream_the_configured_tokens() {
        let demo = Demo::new(DemoConfig::default());
        for body in [json!(null), json!({})] {
            let got = collect(&demo, &ctx(Some(body), None)).await;
            assert_eq!(got.len(), 6);
            assert_eq!(got[1].1, json!({"event":"data","index":0,"token":"Hello"}));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_text_resumes_anywhere_with_the_same_events() {
        let demo = Demo::new(DemoConfig::default());
        // Escapes make the text be unescaped; without, it is read in place.
        for text in ["Hi, you: héllo wörld!", "tab\there \"q\" é"] {
            let body = json!({ "text": text });
            let whole = collect(&demo, &ctx(Some(body.clone()), None)).await;
            let end_id = tokens(text).count() + 1;
            assert_eq!(whole.len(), end_id + 1);
            assert_eq!(whole.last().unwrap().0, end_id.to_string());
            for k in 0..end_id {
                let resumed = collect(&demo, &ctx(Some(body.clone()), Some(&k.to_string()))).await;
                let ids: Vec<_> = resumed.iter().map(|(id, d, _)| (id, d)).collect();
                let expected: Vec<_> = whole[k + 1..].iter().map(|(id, d, _)| (id, d)).collect();
                assert_eq!(ids, expected, "{text:?} after {k}");
            }
            let err = demo
                .open(&ctx(Some(body), Some(&end_id.to_string())))
                .await
                .err()
                .unwrap();
            assert_eq!(err.kind, crate::ErrorKind::Finished);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_text_is_start_and_end() {
        let demo = Demo::new(DemoConfig::default());
        let got = collect(&demo, &ctx(Some(json!({"text": ""})), None)).await;
        let ids: Vec<_> = got.iter().map(|(id, _, _)| id.as_str()).collect();
        assert_eq!(ids, ["0", "1"]);
        assert_eq!(got[1].1, json!({"event":"end","message":"done"}));
        assert_eq!(got[1].2, Duration::from_millis(500));
    }

    #[test]
    fn a_text_without_escapes_is_read_from_the_body_itself() {
        let body: JsonBody = r#"{"text": "a b"}"#.parse().unwrap();
        match Text::of(&body).unwrap() {
            Some(Text::Body(shared, range)) => {
                assert!(std::ptr::eq(shared.as_str(), body.as_str()));
                assert_eq!(&body.as_str()[range], "a b");
            }
            _ => panic!("the text was copied"),
        }
        let body: JsonBody = r#"{"text": "a\nb"}"#.parse().unwrap();
        assert!(matches!(Text::of(&body).unwrap(), Some(Text::Unescaped(t)) if &*t == "a\nb"));
    }

    #[test]
    fn classes_are_char_classes_and_counting_is_splitting() {
        let class = |c: char| {
            if c.is_alphanumeric() {
                Class::Word
            } else if c.is_whitespace() {
                Class::Space
            } else {
                Class::Other
            }
        };
        let mut all: String = (0u8..=127).map(char::from).collect();
        all.push_str("é\u{A0}\u{2028}ß9\u{1F600}\u{300}x");
        for (at, c) in all.char_indices() {
            assert!(
                class_at(&all, at) == Some((class(c), c.len_utf8())),
                "{c:?}"
            );
        }
        for text in [all.as_str(), "a  b\t\n!?", " x", "\u{A0}\u{A0}y"] {
            assert_eq!(tokens(text).count(), tokens(text).collect::<Vec<_>>().len());
            assert_eq!(tokens(text).collect::<String>(), text);
        }
    }

    #[test]
    fn tokens_are_words_spaces_and_single_punctuation() {
        let split = |text| tokens(text).collect::<Vec<_>>();
        assert_eq!(split("Hello World!"), ["Hello", " ", "World", "!"]);
        assert_eq!(split("a  b?!"), ["a", "  ", "b", "?", "!"]);
        assert_eq!(split("héllo wörld"), ["héllo", " ", "wörld"]);
        assert_eq!(
            split("\u{1F600}\u{1F600} 1"),
            ["\u{1F600}", "\u{1F600}", " ", "1"]
        );
        assert!(split("").is_empty());
    }
}
