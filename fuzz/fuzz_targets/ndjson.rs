//! The NDJSON encoder: every event is exactly one line of JSON that gives
//! back its data (and, in the envelope, its id, name and source) exactly.
#![no_main]

use std::time::Duration;

use backends::Event;
use bytes::BytesMut;
use gateway::Format;
use gateway::encode::{CloseReason, Encoder};
use gateway_fuzz::{event_of, fields, flags};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let (flags, rest) = flags(data);
    let envelope = flags & 8 != 0;
    let encoder = Encoder::new(Format::Ndjson, envelope, Duration::from_secs(3), "{}");
    let f = fields(rest, 12);
    let events: Vec<Event> = f
        .chunks(4)
        .enumerate()
        .map(|(i, f)| event_of(flags >> (i % 2), f))
        .collect();
    let mut buf = BytesMut::new();
    encoder.preamble(&mut buf);
    for event in &events {
        encoder.event(&mut buf, event, event.id.as_deref());
    }
    let last = events.iter().rev().find_map(|e| e.id.as_deref());
    encoder.close(&mut buf, CloseReason::Shutdown, last);

    let text = std::str::from_utf8(&buf).expect("the encoder writes UTF-8");
    let lines: Vec<&str> = text
        .strip_suffix('\n')
        .expect("a final newline")
        .split('\n')
        .collect();
    assert_eq!(
        lines.len(),
        events.len() + 1,
        "one line per event and the close: {text:?}"
    );
    for (event, line) in events.iter().zip(&lines) {
        let value: Value = serde_json::from_str(line).expect("every line is JSON");
        let data = if event.data.is_json() {
            serde_json::from_str::<Value>(event.data.as_str()).expect("JSON data")
        } else {
            Value::String(event.data.as_str().to_string())
        };
        if envelope {
            assert_eq!(value.get("id").and_then(Value::as_str), event.id.as_deref());
            assert_eq!(
                value.get("event").and_then(Value::as_str),
                event.name.as_deref()
            );
            assert_eq!(value["source"].as_str(), Some(&*event.source));
            assert_eq!(value["data"], data, "{line}");
        } else {
            assert_eq!(value, data, "{line}");
        }
    }
    let close: Value = serde_json::from_str(lines[events.len()]).expect("the close is JSON");
    let body = if envelope {
        assert_eq!(close.get("id").and_then(Value::as_str), last);
        &close["data"]
    } else {
        &close
    };
    assert_eq!(body["event"], "gateway.close");
    assert_eq!(
        body["last_event_id"].as_str(),
        last,
        "the close names the last id: {text:?}"
    );
});
