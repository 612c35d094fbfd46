//! What only the `redis` backend does, against the real Redis on
//! 127.0.0.1:6379: entry fields of its own choosing, and entries deleted
//! from the middle of a stream (`XDEL`). Everything every bus backend does
//! is in the conformance suite (`tests/bus.rs`).

use futures::StreamExt;
use gateway_tests::bus::redis::RedisEngine;
use gateway_tests::bus::{Engine, gateway, lines, publish, take, within};
use gateway_tests::{client, numbers as ns, sse_events};
use redis::AsyncCommands;
use serde_json::json;

#[tokio::test]
async fn field_and_name_field_say_where_data_and_name_are() {
    let engine = RedisEngine::shared("fields").await;
    let settings = json!({"field": "payload", "name_field": "kind", "history": 2});
    let server = gateway(&engine, settings, json!({})).await;
    let mut redis = engine.connection().await;
    let key = engine.key("f");
    let _: String = redis
        .xadd(&key, "*", &[("payload", "plain text"), ("kind", "note")])
        .await
        .expect("XADD");
    let _: String = redis
        .xadd(&key, "*", &[("payload", r#"{"a": 1}"#)])
        .await
        .expect("XADD");
    let _: bool = redis.expire(&key, 600).await.expect("EXPIRE");
    let got = take(&mut lines(&server, "f", None).await, 2).await;
    assert_eq!(
        got,
        [json!("plain text"), json!({"a": 1})],
        "text, then JSON"
    );
    let response = within("SSE", client().get(server.url("/s/f?format=sse")).send())
        .await
        .expect("request");
    let mut events = sse_events(response);
    let first = within("an event", events.next()).await.expect("event");
    assert_eq!(
        (first.event.as_str(), first.data.as_str()),
        ("note", "plain text")
    );
    assert!(first.id.contains('-'), "Redis ids are ms-seq: {first:?}");
}

/// Redis records the largest id `XDEL` removed: a client resuming before it
/// is told entries may be gone; one after it is not.
#[tokio::test]
async fn an_entry_deleted_after_the_client_read_on_is_announced() {
    let engine = RedisEngine::shared("xdel").await;
    let ids = publish(&engine, "d", 0..5).await;
    let mut redis = engine.connection().await;
    let _: i64 = redis.xdel(engine.key("d"), &[&ids[3]]).await.expect("XDEL");
    let server = gateway(&engine, json!({}), json!({})).await;
    let mut got = lines(&server, "d", Some(&ids[1])).await;
    let got = take(&mut got, 3).await;
    assert_eq!(got[0]["kind"], "lagged", "{got:?}");
    assert_eq!(
        got[0]["resume_id"].as_str(),
        Some(ids[1].as_str()),
        "{got:?}"
    );
    assert_eq!(ns(&got[1..]), [2, 4]);
    let mut after = lines(&server, "d", Some(&ids[3])).await;
    assert_eq!(ns(&take(&mut after, 1).await), [4], "nothing gone after 3");
}
