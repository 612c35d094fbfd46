//! Publish routes against the real Redis on 127.0.0.1:6379: a `POST` with a
//! bearer token appends an event that stream routes serve, with the id the
//! answer names; every wrong request is refused with its own status.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use gateway::config::{self, Source};
use gateway_tests::{TestServer, client, sse_events};
use serde_json::{Value, json};

const BOUND: Duration = Duration::from_secs(10);
const TOKEN: &str = "publish-token-0123456789";

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {BOUND:?}"))
}

/// A gateway with `/rooms/{room}` (reading) and `/rooms/{room}/events`
/// (publishing) on keys `PREFIX:{room}`; the token comes from the
/// environment, as a deployment would give it.
async fn server() -> TestServer {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let prefix = format!("test:publish:{}:{nanos}", std::process::id());
    let text = format!(
        r#"
[server]
max_body_bytes = 1024

[routes.rooms]
path = "/rooms/{{room}}"
[routes.rooms.backends.bus]
type = "redis"
stream = "{prefix}:{{room}}"
allow = "{prefix}:*"

[publish.rooms]
path = "/rooms/{{room}}/events"
tokens = ["${{PUBLISH_TOKEN}}"]
[publish.rooms.target]
type = "redis"
stream = "{prefix}:{{room}}"
allow = "{prefix}:*"
max_len = 1000
"#
    );
    let path = std::env::temp_dir().join(format!("publish-{nanos}.toml"));
    std::fs::write(&path, text).expect("write the config");
    let env = HashMap::from([("PUBLISH_TOKEN".to_string(), TOKEN.to_string())]);
    let loaded = config::load(Source::File(&path), Some(env));
    let _ = std::fs::remove_file(&path);
    TestServer::from_config(&loaded.expect("a valid config")).await
}

async fn post(
    server: &TestServer,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> reqwest::Response {
    let mut request = client().post(server.url(path)).body(body.to_string());
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    within("the publish answer", request.send())
        .await
        .expect("request")
}

async fn error_code(response: reqwest::Response) -> String {
    let body: Value = within("the body", response.json()).await.expect("JSON");
    body["error"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn a_published_event_reaches_readers_with_the_id_it_was_given() {
    let server = server().await;
    publish_and_read(&server).await;
}

/// Publishes an event to `/rooms/lobby/events` while a reader is on
/// `/rooms/lobby`: the reader gets it, with the id the publish answered.
async fn publish_and_read(server: &TestServer) {
    let response = within(
        "a stream",
        client().get(server.url("/rooms/lobby?format=sse")).send(),
    )
    .await
    .expect("request");
    assert_eq!(response.status(), 200);
    let mut events = sse_events(response);
    let published = post(
        server,
        "/rooms/lobby/events",
        Some(TOKEN),
        r#"{"data": {"text": "hello"}, "event": "message"}"#,
    )
    .await;
    assert_eq!(published.status(), 201);
    let id = within("the body", published.json::<Value>())
        .await
        .expect("JSON")["id"]
        .as_str()
        .expect("an id")
        .to_string();
    let event = within("the event", events.next()).await.expect("an event");
    assert_eq!(
        (event.event.as_str(), event.id.as_str()),
        ("message", id.as_str())
    );
    assert_eq!(
        serde_json::from_str::<Value>(&event.data).expect("JSON data"),
        json!({"text": "hello"})
    );
}

#[tokio::test]
async fn publishing_without_the_right_token_or_body_is_refused() {
    let server = server().await;
    let path = "/rooms/lobby/events";
    let event = r#"{"data": 1}"#;

    let none = post(&server, path, None, event).await;
    assert_eq!(none.status(), 401);
    assert_eq!(
        none.headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer realm=\"gateway\"")
    );
    assert_eq!(error_code(none).await, "unauthorized");

    let wrong = post(&server, path, Some("publish-token-0123456780"), event).await;
    assert_eq!(wrong.status(), 403);
    assert_eq!(error_code(wrong).await, "forbidden");

    let basic = within(
        "an answer",
        client()
            .post(server.url(path))
            .header("authorization", format!("Basic {TOKEN}"))
            .body(event)
            .send(),
    )
    .await
    .expect("request");
    assert_eq!(basic.status(), 401, "only Bearer tokens publish");

    let large = format!(r#"{{"data": "{}"}}"#, "x".repeat(2048));
    let too_large = post(&server, path, Some(TOKEN), &large).await;
    assert_eq!(too_large.status(), 413);

    for bad in [
        "",
        "not json",
        "[1]",
        r#"{"event": "x"}"#,
        r#"{"data": 1, "event": "a\nb"}"#,
    ] {
        let refused = post(&server, path, Some(TOKEN), bad).await;
        assert_eq!(refused.status(), 400, "{bad:?}");
        assert_eq!(error_code(refused).await, "bad_request");
    }

    let get = within("an answer", client().get(server.url(path)).send())
        .await
        .expect("request");
    assert_eq!(get.status(), 405);
    assert_eq!(
        get.headers().get("allow").and_then(|v| v.to_str().ok()),
        Some("POST")
    );
}

#[test]
fn publish_config_problems_are_all_reported() {
    let text = r#"
[routes.r]
path = "/r"
[routes.r.backends.d]
type = "demo"

[publish.short]
path = "/r"
tokens = ["short", "${MISSING_TOKEN_VAR}"]
[publish.short.target]
type = "redis"
stream = "k:{x}"

[publish.none]
path = "/p"
"#;
    let path = std::env::temp_dir().join(format!("publish-bad-{}.toml", std::process::id()));
    std::fs::write(&path, text).expect("write the config");
    let error = config::load(Source::File(&path), Some(HashMap::new())).expect_err("invalid");
    let _ = std::fs::remove_file(&path);
    let keys: Vec<String> = error.problems.iter().map(|p| p.key.clone()).collect();
    for key in [
        "publish.short.tokens",
        "publish.short.path",
        "publish.short.target.allow",
        "publish.none.tokens",
        "publish.none.target",
    ] {
        assert!(keys.iter().any(|k| k == key), "{key} missing in {error}");
    }
    assert!(error.to_string().contains("MISSING_TOKEN_VAR"), "{error}");
}

/// The same through NATS JetStream: a stream of this test, a publish route
/// targeting its subject, a reader route on the same subject.
#[tokio::test]
async fn a_published_event_reaches_nats_readers_with_its_sequence() {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let tag = format!("{}_{nanos}", std::process::id());
    let (stream, prefix) = (format!("TEST_PUBLISH_{tag}"), format!("test.publish.{tag}"));
    let nats = within(
        "connecting to NATS",
        async_nats::connect("nats://127.0.0.1:4222"),
    )
    .await
    .expect("nats-server with JetStream is running (.ci/run starts it)");
    let js = async_nats::jetstream::new(nats);
    within(
        "creating the stream",
        js.create_stream(async_nats::jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![format!("{prefix}.>")],
            storage: async_nats::jetstream::stream::StorageType::Memory,
            ..Default::default()
        }),
    )
    .await
    .expect("stream created");
    let text = format!(
        r#"
[routes.rooms]
path = "/rooms/{{room}}"
[routes.rooms.backends.bus]
type = "nats"
stream = "{stream}"
subject = "{prefix}.{{room}}"
allow = "{prefix}.*"

[publish.rooms]
path = "/rooms/{{room}}/events"
tokens = ["{TOKEN}"]
[publish.rooms.target]
type = "nats"
stream = "{stream}"
subject = "{prefix}.{{room}}"
allow = "{prefix}.*"
"#
    );
    let path = std::env::temp_dir().join(format!("publish-nats-{nanos}.toml"));
    std::fs::write(&path, text).expect("write the config");
    let loaded = config::load(Source::File(&path), Some(HashMap::new()));
    let _ = std::fs::remove_file(&path);
    let server = TestServer::from_config(&loaded.expect("a valid config")).await;
    publish_and_read(&server).await;
    // A parameter that would change the subject is refused.
    let outside = post(&server, "/rooms/a.b/events", Some(TOKEN), r#"{"data": 1}"#).await;
    assert_eq!(outside.status(), 400, "a dot would change the subject");
    let _ = within("deleting the stream", js.delete_stream(&stream)).await;
}
