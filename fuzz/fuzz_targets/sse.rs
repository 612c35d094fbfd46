//! The SSE encoder, read back by an independent parser (eventsource-stream,
//! which follows the WHATWG algorithm): every event the gateway writes comes
//! back as exactly one event with the same id, name and data (line breaks
//! made LF, and CR/LF/NUL in ids and names made U+FFFD, as `sse.rs` says),
//! no more and no fewer, and the closing event carries the last id.
#![no_main]

use std::time::Duration;

use backends::Event;
use bytes::BytesMut;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use gateway::Format;
use gateway::encode::{CloseReason, Encoder};
use gateway_fuzz::{event_of, fields, flags};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// What a single-line SSE field (`id`, `event`) carries.
fn single_line(value: &str) -> String {
    value.replace(['\r', '\n', '\0'], "\u{FFFD}")
}

/// What a client joins `data` lines into.
fn lines_joined(data: &str) -> String {
    data.replace("\r\n", "\n").replace('\r', "\n")
}

fuzz_target!(|data: &[u8]| {
    let (flags, rest) = flags(data);
    let envelope = flags & 8 != 0;
    let encoder = Encoder::new(Format::Sse, envelope, Duration::from_millis(1500), "{}");
    // Up to three events, four fields each (id, name, data, source).
    let f = fields(rest, 12);
    let events: Vec<Event> = f
        .chunks(4)
        .enumerate()
        .map(|(i, f)| event_of(flags >> (i % 2), f))
        .collect();
    let mut buf = BytesMut::new();
    encoder.preamble(&mut buf);
    let mut last_id: Option<String> = None;
    for event in &events {
        encoder.event(&mut buf, event, event.id.as_deref());
        if let Some(id) = &event.id {
            last_id = Some(id.to_string());
        }
    }
    encoder.close(&mut buf, CloseReason::Lifetime, last_id.as_deref());

    let text = std::str::from_utf8(&buf).expect("the encoder writes UTF-8");
    let parsed: Vec<_> = futures::executor::block_on(
        futures::stream::iter([Ok::<_, std::convert::Infallible>(text.to_string())])
            .eventsource()
            .collect::<Vec<_>>(),
    );
    let parsed: Vec<_> = parsed
        .into_iter()
        .map(|e| e.expect("the encoder's output parses"))
        .collect();
    assert_eq!(
        parsed.len(),
        events.len() + 1,
        "one event per event, and the close: {text:?}"
    );

    let mut seen_id = String::new();
    for (event, got) in events.iter().zip(&parsed) {
        if let Some(id) = &event.id {
            seen_id = single_line(id);
        }
        assert_eq!(got.id, seen_id, "id of {event:?} in {text:?}");
        let name = event
            .name
            .as_deref()
            .filter(|n| !n.is_empty())
            .map_or("message".into(), single_line);
        assert_eq!(got.event, name, "name of {event:?} in {text:?}");
        if envelope {
            let value: Value = serde_json::from_str(&got.data).expect("the envelope is JSON");
            assert_eq!(value.get("id").and_then(Value::as_str), event.id.as_deref());
            assert_eq!(
                value.get("event").and_then(Value::as_str),
                event.name.as_deref()
            );
            assert_eq!(value["source"].as_str(), Some(&*event.source));
            let data = if event.data.is_json() {
                serde_json::from_str::<Value>(event.data.as_str()).expect("JSON data")
            } else {
                Value::String(event.data.as_str().to_string())
            };
            assert_eq!(value["data"], data, "data of {event:?} in {text:?}");
        } else {
            assert_eq!(
                got.data,
                lines_joined(event.data.as_str()),
                "data of {event:?} in {text:?}"
            );
        }
    }
    let close = parsed.last().expect("the close");
    assert_eq!(close.event, "gateway.close");
    assert_eq!(close.retry, Some(Duration::from_millis(1500)));
    if let Some(id) = &last_id {
        assert_eq!(
            close.id,
            single_line(id),
            "the close carries the last id: {text:?}"
        );
    }
    let close: Value = serde_json::from_str(&close.data).expect("the close is JSON");
    let body = if envelope { &close["data"] } else { &close };
    assert_eq!(
        body["last_event_id"].as_str(),
        last_id.as_deref(),
        "{text:?}"
    );
});
