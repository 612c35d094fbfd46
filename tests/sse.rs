//! No payload can change the shape of an SSE stream: arbitrary ids, names and
//! data (CR, LF, CRLF, NUL, any unicode) go through a real server and an
//! independent parser, which must see exactly the events sent, with the
//! documented changes: CR, LF, NUL in names become U+FFFD; the line breaks of
//! text data arrive as LF; an id arrives as a header-safe token (visible
//! ASCII) that, sent back as `Last-Event-ID`, gives the backend exactly its
//! id again. In an envelope the JSON carries every other value exactly.

use std::sync::Arc;

use backends::Backend;
use futures::StreamExt;
use gateway::config::{Envelope, ServerConfig};
use gateway_tests::{Echo, TestServer, all_ndjson, client, resumed_id, sse_events};
use proptest::prelude::*;
use serde_json::{Value, json};

struct Sent {
    id: Option<String>,
    name: Option<String>,
    data: Data,
}

#[derive(Debug, Clone)]
enum Data {
    Text(String),
    Json(Value),
}

impl std::fmt::Debug for Sent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} {:?} {:?}", self.id, self.name, self.data)
    }
}

/// Strings rich in what could break a line-based format.
fn tricky() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("\r".to_string()),
        Just("\n".to_string()),
        Just("\r\n".to_string()),
        Just("\0".to_string()),
        Just(":".to_string()),
        Just(" ".to_string()),
        Just("data: x".to_string()),
        Just("id: 1".to_string()),
        Just("event: e".to_string()),
        Just("retry: 1".to_string()),
        Just("\u{FEFF}".to_string()),
        Just("\u{2028}".to_string()),
        "\\PC{0,4}",
        any::<String>().prop_map(|s| s.chars().take(6).collect()),
    ];
    prop::collection::vec(piece, 0..6).prop_map(|v| v.concat())
}

fn sent() -> impl Strategy<Value = Sent> {
    let data = prop_oneof![
        tricky().prop_map(Data::Text),
        tricky().prop_map(|s| Data::Json(json!({ "s": s, "n": [1, 2.5, null] }))),
    ];
    (
        proptest::option::of(tricky()),
        proptest::option::of(tricky()),
        data,
    )
        .prop_map(|(id, name, data)| Sent { id, name, data })
}

fn request_body(events: &[Sent]) -> Value {
    let events: Vec<Value> = events
        .iter()
        .map(|e| {
            let mut v = json!({});
            if let Some(id) = &e.id {
                v["id"] = json!(id);
            }
            if let Some(name) = &e.name {
                v["name"] = json!(name);
            }
            match &e.data {
                Data::Text(t) => v["text"] = json!(t),
                Data::Json(j) => v["data"] = j.clone(),
            }
            v
        })
        .collect();
    json!({ "events": events })
}

fn sanitized(s: &str) -> String {
    s.replace(['\r', '\n', '\0'], "\u{FFFD}")
}

/// What a WHATWG client sees of a payload: each CR, LF or CRLF is one LF.
fn as_lines(s: &str) -> String {
    s.replace("\r\n", "\n").replace('\r', "\n")
}

async fn server(envelope: Envelope) -> TestServer {
    let echo: Arc<dyn Backend> = Arc::new(Echo);
    TestServer::route(
        "/echo",
        vec![("echo", echo)],
        |r| r.envelope = envelope,
        ServerConfig::default(),
    )
    .await
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn sse_parser_sees_exactly_the_events_sent(events in prop::collection::vec(sent(), 1..6)) {
        let rt = runtime();
        rt.block_on(async {
            let server = server(Envelope::Never).await;
            let response = client()
                .post(server.url("/echo?format=sse"))
                .json(&request_body(&events))
                .send()
                .await
                .unwrap();
            let got: Vec<_> = sse_events(response).collect().await;
            assert_eq!(got.len(), events.len(), "{events:?}");
            // The last id persists over events that have none (or an empty
            // one), as in a browser; each token resumes at exactly its id.
            let mut last_id = (String::new(), String::new());
            for (sent, got) in events.iter().zip(&got) {
                if let Some(id) = sent.id.as_ref().filter(|id| !id.is_empty()) {
                    assert!(got.id.bytes().all(|b| b.is_ascii_graphic()), "{:?}", got.id);
                    last_id = (got.id.clone(), id.clone());
                }
                assert_eq!(got.id, last_id.0, "{events:?}");
                if !last_id.0.is_empty() {
                    let resumed = resumed_id(&server.url("/echo"), &last_id.0).await;
                    assert_eq!(resumed, json!(last_id.1), "{events:?}");
                }
                let name = sent.name.as_deref().map(sanitized).filter(|n| !n.is_empty());
                assert_eq!(got.event, name.unwrap_or("message".into()), "{events:?}");
                match &sent.data {
                    Data::Text(t) => assert_eq!(got.data, as_lines(t), "{events:?}"),
                    Data::Json(j) => {
                        assert_eq!(&serde_json::from_str::<Value>(&got.data).unwrap(), j)
                    }
                }
            }
        });
    }

    #[test]
    fn envelopes_carry_every_value_exactly(events in prop::collection::vec(sent(), 1..4)) {
        let rt = runtime();
        rt.block_on(async {
            let server = server(Envelope::Always).await;
            let body = request_body(&events);
            let sse = client().post(server.url("/echo?format=sse")).json(&body).send().await.unwrap();
            let from_sse: Vec<Value> = sse_events(sse)
                .map(|e| serde_json::from_str(&e.data).unwrap())
                .collect()
                .await;
            let mut expected: Vec<Value> = events
                .iter()
                .map(|e| {
                    let mut v = json!({ "source": "echo" });
                    if let Some(name) = &e.name {
                        v["event"] = json!(name);
                    }
                    v["data"] = match &e.data {
                        Data::Text(t) => json!(t),
                        Data::Json(j) => j.clone(),
                    };
                    v
                })
                .collect();
            // The envelope's id is the resume token, which gives back the id.
            for ((sent, got), want) in events.iter().zip(&from_sse).zip(&mut expected) {
                if let Some(id) = sent.id.as_ref().filter(|id| !id.is_empty()) {
                    let token = got["id"].as_str().expect("an id");
                    assert_eq!(resumed_id(&server.url("/echo"), token).await, json!(id));
                    want["id"] = json!(token);
                }
            }
            assert_eq!(from_sse, expected);
            let ndjson = client().post(server.url("/echo?format=ndjson")).json(&body).send().await.unwrap();
            assert_eq!(all_ndjson(ndjson).await, expected);
        });
    }
}

#[tokio::test]
async fn ndjson_lines_are_the_data_alone() {
    let server = server(Envelope::Never).await;
    let body = json!({"events": [
        {"id": "1", "name": "a", "data": {"x": "line\nbreak"}},
        {"text": "plain\r\ntext"},
        {"data": [1, 2]},
    ]});
    let response = client()
        .post(server.url("/echo"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.text().await.unwrap(),
        "{\"x\":\"line\\nbreak\"}\n\"plain\\r\\ntext\"\n[1,2]\n"
    );
}

/// Browsers send `Last-Event-ID` UTF-8 encoded: raw non-ASCII ids (from
/// before tokens, or typed by hand) reach the backend intact.
#[tokio::test]
async fn a_raw_utf8_last_event_id_reaches_the_backend() {
    let server = server(Envelope::Never).await;
    let id = reqwest::header::HeaderValue::from_bytes("café-1".as_bytes()).unwrap();
    let response = client()
        .post(server.url("/echo"))
        .header("last-event-id", id)
        .json(&json!({"events": [], "echo_last_event_id": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.text().await.unwrap(), "\"café-1\"\n");
    // An empty header is no id, and the query parameter is used instead.
    let response = client()
        .post(server.url("/echo?lastEventId=7"))
        .header("last-event-id", "")
        .json(&json!({"events": [], "echo_last_event_id": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.text().await.unwrap(), "\"7\"\n");
}
