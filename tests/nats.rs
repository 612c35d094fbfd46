//! What only the `nats` backend does, against the real nats-server with
//! JetStream on 127.0.0.1:4222: one consumer per subject per gateway,
//! history found by reading a bounded window, headers for names, subject
//! rules, streams it does not create, and dense sequences. Everything every
//! bus backend does is in the conformance suite (`tests/bus.rs`).

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use gateway_tests::bus::nats::NatsEngine;
use gateway_tests::bus::{
    Engine, gateway, gateway_with, lines, post, publish, refused, take, within,
};
use gateway_tests::{numbers as ns, sse_events};
use serde_json::json;

#[tokio::test]
async fn one_consumer_per_subject_per_gateway_deleted_with_its_last_client() {
    let engine = NatsEngine::shared("two").await;
    // Heartbeats make the gateway write, and so notice clients that left.
    let beats = json!({"heartbeat": "200ms"});
    let a = gateway(&engine, json!({}), beats.clone()).await;
    let b = gateway(&engine, json!({}), beats).await;
    let on_a = lines(&a, "lobby", None).await;
    let also_on_a = lines(&a, "lobby", None).await;
    let on_b = lines(&b, "lobby", None).await;
    within("one consumer per gateway", async {
        while engine.consumers().await != 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    drop((on_a, also_on_a, on_b));
    within("the consumers are deleted", async {
        while engine.consumers().await > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn history_reads_a_window_and_names_come_from_a_header() {
    let engine = NatsEngine::shared("history").await;
    publish(&engine, "h", 0..5).await;
    publish(&engine, "other", 100..103).await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("event", "greeting");
    let seq = engine
        .publish_message("h", headers, Bytes::from("hello there"))
        .await;
    let server = gateway(&engine, json!({"history": 3}), json!({})).await;
    let got = take(&mut lines(&server, "h", None).await, 3).await;
    assert_eq!(
        got,
        [json!({"n": 3}), json!({"n": 4}), json!("hello there")]
    );
    // A window of 4 sequences holds only the last message of the subject.
    let narrow = gateway(&engine, json!({"history": 3, "max_catchup": 4}), json!({})).await;
    let response = within(
        "SSE",
        gateway_tests::client()
            .get(narrow.url("/s/h?format=sse"))
            .send(),
    )
    .await
    .expect("request");
    let mut events = sse_events(response);
    let event = within("an event", events.next()).await.expect("event");
    assert_eq!(event.id, seq.to_string());
    assert_eq!(
        (event.event.as_str(), event.data.as_str()),
        ("greeting", "hello there")
    );
}

#[tokio::test]
async fn subjects_the_gateway_will_not_read() {
    let engine = NatsEngine::shared("refusals").await;
    let server = gateway(&engine, json!({}), json!({})).await;
    // A parameter that would change the subject.
    for room in ["a.b", "%3E", "%2A"] {
        let (status, body) = refused(&server, room, None).await;
        assert_eq!(
            (status, &body["error"]),
            (400, &json!("bad_request")),
            "{room}: {body}"
        );
    }
    let (status, _) = post(&server, "a.b", &json!({"data": 1})).await;
    assert_eq!(status, 400, "publishing there too");
    // A subject the stream does not hold.
    let mut elsewhere = engine.backend();
    elsewhere["subject"] = json!(format!("{}x.{{room}}", engine.prefix));
    elsewhere["allow"] = json!(format!("{}x.*", engine.prefix));
    let server = gateway_with(elsewhere, engine.target(), json!({}), json!({})).await;
    let (status, body) = refused(&server, "h", None).await;
    assert_eq!(
        (status, &body["error"]),
        (404, &json!("not_found")),
        "{body}"
    );
    // A stream that does not exist: the gateway does not make it.
    let mut missing = engine.backend();
    missing["stream"] = json!(format!("{}_MISSING", engine.name));
    let server = gateway_with(missing, engine.target(), json!({}), json!({})).await;
    let (status, body) = refused(&server, "h", None).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("no JetStream stream")),
        "{body}"
    );
}

/// With `create`, a missing stream is declared on the first request (its
/// subjects from `allow`, the storage and retention asked), read and
/// published to at once: no `nats` CLI needed to try the example.
#[tokio::test]
async fn create_declares_a_missing_stream() {
    let engine = NatsEngine::shared("create").await;
    let name = format!("{}_MADE", engine.name);
    let mut backend = engine.backend();
    backend["stream"] = json!(name);
    backend["subject"] = json!(format!("{}m.{{room}}", engine.prefix));
    backend["allow"] = json!(format!("{}m.*", engine.prefix));
    backend["create"] = json!({"storage": "memory", "max_age": "1h"});
    let server = gateway_with(backend.clone(), backend, json!({}), json!({})).await;
    let (status, body) = post(&server, "lobby", &json!({"data": {"n": 1}})).await;
    assert_eq!(status, 201, "{body}");
    let mut stream = lines(&server, "lobby", Some("0")).await;
    let events = take(&mut stream, 1).await;
    assert_eq!(events[0]["n"], 1, "{events:?}");
    let js = engine.jetstream().await;
    let made = within("the stream's info", js.get_stream(&name))
        .await
        .expect("the gateway declared the stream");
    let config = &made.cached_info().config;
    assert_eq!(config.subjects, [format!("{}m.*", engine.prefix)]);
    assert_eq!(
        config.storage,
        async_nats::jetstream::stream::StorageType::Memory
    );
    assert_eq!(config.max_age, Duration::from_secs(3600));
    let _ = within("deleting the stream", js.delete_stream(&name)).await;
}

/// Sequences are dense: a client whose last message was removed, but
/// nothing after it, hears of no gap.
#[tokio::test]
async fn resuming_from_just_before_the_oldest_left_is_no_gap() {
    let engine = NatsEngine::with("dense", |c| c.max_messages = 5).await;
    let seqs = publish(&engine, "t", 0..10).await;
    let server = gateway(&engine, json!({}), json!({})).await;
    let mut got = lines(&server, "t", Some(&seqs[4])).await;
    assert_eq!(ns(&take(&mut got, 5).await), [5, 6, 7, 8, 9]);
}
