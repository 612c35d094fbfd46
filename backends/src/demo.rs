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

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::problem::Problem;
use crate::{Backend, BackendError, Data, Event, EventStream, RequestContext};

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

    /// The tokens a request asks for: its body's `text`, or the configured ones.
    fn tokens(&self, body: Option<&Value>) -> Result<Vec<String>, BackendError> {
        match body {
            None | Some(Value::Null) => Ok(self.config.tokens.clone()),
            Some(Value::Object(map)) => {
                if let Some(unknown) = map.keys().find(|k| *k != "text") {
                    return Err(BackendError::bad_request(format!(
                        "unknown field `{unknown}` in the request body; expected {{\"text\": \"...\"}}"
                    )));
                }
                match map.get("text") {
                    Some(Value::String(text)) => Ok(tokenize(text)),
                    Some(_) => Err(BackendError::bad_request(
                        "`text` in the request body must be a string",
                    )),
                    None => Ok(self.config.tokens.clone()),
                }
            }
            Some(_) => Err(BackendError::bad_request(
                "the request body must be a JSON object like {\"text\": \"...\"}",
            )),
        }
    }
}

#[async_trait]
impl Backend for Demo {
    async fn open(&self, ctx: &RequestContext) -> Result<EventStream, BackendError> {
        let tokens = self.tokens(ctx.body.as_ref())?;
        let end_id = tokens.len() as u64 + 1;
        let first = match ctx.last_event_id.as_deref() {
            None => 0,
            Some(last) => match last.trim().parse::<u64>() {
                Ok(last) if last >= end_id => return Err(BackendError::finished()),
                Ok(last) => last + 1,
                Err(_) => {
                    return Err(BackendError::bad_request(format!(
                        "Last-Event-ID {last:?} is not an id of this stream (0 to {end_id})"
                    )));
                }
            },
        };
        let config = Arc::clone(&self.config);
        let events = futures::stream::iter(first..=end_id).then(move |id| {
            let (event, pause) = demo_event(&config, &tokens, id);
            async move {
                // A resumed stream sends its first event at once.
                if id != first && !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
                Ok(event)
            }
        });
        Ok(events.boxed())
    }
}

/// Event `id` of the stream, and the pause that precedes it (the pause that
/// follows the event before it in the reference).
fn demo_event(config: &DemoConfig, tokens: &[String], id: u64) -> (Event, Duration) {
    let end_id = tokens.len() as u64 + 1;
    let (name, data, pause) = if id == 0 {
        (
            "start",
            json!({"event": "start", "message": config.start_message}),
            Duration::ZERO,
        )
    } else if id == end_id {
        let pause = if id == 1 {
            config.start_pause
        } else {
            config.token_pause
        };
        (
            "end",
            json!({"event": "end", "message": config.end_message}),
            pause,
        )
    } else {
        let index = id - 1;
        let pause = if id == 1 {
            config.start_pause
        } else {
            config.token_pause
        };
        (
            "data",
            json!({"event": "data", "index": index, "token": tokens[index as usize]}),
            pause,
        )
    };
    (
        Event::new(Data::json(&data))
            .with_id(id.to_string())
            .with_name(name),
        pause,
    )
}

/// Splits text into runs of letters and digits, runs of white space, and single
/// other characters: `"Hello World!"` gives `["Hello", " ", "World", "!"]`.
pub fn tokenize(text: &str) -> Vec<String> {
    #[derive(PartialEq, Clone, Copy)]
    enum Class {
        Word,
        Space,
        Other,
    }
    let class = |c: char| {
        if c.is_alphanumeric() {
            Class::Word
        } else if c.is_whitespace() {
            Class::Space
        } else {
            Class::Other
        }
    };
    let mut tokens: Vec<String> = Vec::new();
    let mut last = None;
    for c in text.chars() {
        let this = class(c);
        match tokens.last_mut() {
            Some(token) if last == Some(this) && this != Class::Other => token.push(c),
            _ => tokens.push(c.to_string()),
        }
        last = Some(this);
    }
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    fn ctx(body: Option<Value>, last: Option<&str>) -> RequestContext {
        RequestContext {
            body,
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
    async fn bad_bodies_are_refused() {
        let demo = Demo::new(DemoConfig::default());
        for body in [
            json!({"text": 1}),
            json!({"txt": "a"}),
            json!([1]),
            json!("text"),
        ] {
            let err = demo
                .open(&ctx(Some(body.clone()), None))
                .await
                .err()
                .unwrap();
            assert_eq!(err.kind, crate::ErrorKind::BadRequest, "{body}");
        }
    }

    #[test]
    fn tokenizer_splits_words_spaces_and_punctuation() {
        assert_eq!(tokenize("Hello World!"), ["Hello", " ", "World", "!"]);
        assert_eq!(tokenize("a  b?!"), ["a", "  ", "b", "?", "!"]);
        assert_eq!(tokenize("héllo wörld"), ["héllo", " ", "wörld"]);
        assert!(tokenize("").is_empty());
    }
}
