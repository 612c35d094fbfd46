//! Bad input and bounds: each gets a precise status and a JSON body of the
//! stable shape `{"status", "error", "message", …}`, before any stream starts.

use std::sync::Arc;
use std::time::Duration;

use backends::testing::{Mock, Step, event};
use backends::{Backend, BackendError, ErrorKind};
use futures::StreamExt;
use gateway::config::ServerConfig;
use gateway_tests::{TestServer, client, ndjson_lines};
use serde_json::{Value, json};

async fn error_body(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.headers()["vary"], "accept");
    let body: Value = response.json().await.expect("a JSON body");
    assert_eq!(body["status"], status, "{body}");
    assert_eq!(body["error"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    body
}

fn small_body_limit() -> ServerConfig {
    ServerConfig {
        max_body_bytes: 1024,
        ..ServerConfig::default()
    }
}

fn demo() -> Arc<dyn Backend> {
    Arc::new(backends::demo::Demo::new(Default::default()))
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_whether_declared_or_streamed() {
    let server = TestServer::route("/", vec![("demo", demo())], |_| {}, small_body_limit()).await;
    let big = format!(r#"{{"text": "{}"}}"#, "x".repeat(2000));
    let response = client()
        .post(server.url("/"))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    error_body(response, 413, "payload_too_large").await;
    // Chunked, with no Content-Length to refuse it early.
    let chunks = futures::stream::iter(
        big.into_bytes()
            .chunks(100)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let response = client()
        .post(server.url("/"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    error_body(response, 413, "payload_too_large").await;
    // Just under the limit is fine.
    let fits = format!(r#"{{"text": "{}"}}"#, "y".repeat(1000));
    let response = client()
        .post(server.url("/"))
        .body(fits)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn bodies_that_are_not_json_or_not_the_right_json_are_400() {
    let server = TestServer::default_config().await;
    let response = client()
        .post(server.url("/"))
        .body(r#"{"text": "#)
        .send()
        .await
        .unwrap();
    let body = error_body(response, 400, "bad_request").await;
    assert!(
        body["message"].as_str().unwrap().contains("not valid JSON"),
        "{body}"
    );
    let response = client()
        .post(server.url("/"))
        .body(r#"{"text": 1}"#)
        .send()
        .await
        .unwrap();
    error_body(response, 400, "bad_request").await;
}

#[tokio::test]
async fn unknown_paths_and_methods() {
    let server = TestServer::default_config().await;
    let response = client().get(server.url("/nope")).send().await.unwrap();
    error_body(response, 404, "not_found").await;
    let response = client().delete(server.url("/")).send().await.unwrap();
    assert_eq!(response.headers()["allow"], "GET, POST, HEAD");
    error_body(response, 405, "method_not_allowed").await;
}

#[tokio::test]
async fn last_event_id_that_is_not_of_this_stream_is_400() {
    let server = TestServer::default_config().await;
    let response = client()
        .get(server.url("/"))
        .header("last-event-id", "banana")
        .send()
        .await
        .unwrap();
    error_body(response, 400, "bad_request").await;
}

#[tokio::test]
async fn a_backend_that_cannot_open_gives_its_status() {
    for (kind, status, code) in [
        (ErrorKind::BadRequest, 400, "bad_request"),
        (ErrorKind::NotFound, 404, "not_found"),
        (ErrorKind::Upstream, 502, "upstream"),
        (ErrorKind::Timeout, 504, "timeout"),
        (ErrorKind::Unavailable, 503, "unavailable"),
        (ErrorKind::Internal, 500, "internal"),
    ] {
        let failing: Arc<dyn Backend> = Arc::new(Mock::failing(BackendError::new(kind, "nope")));
        let server =
            TestServer::route("/s", vec![("b", failing)], |_| {}, ServerConfig::default()).await;
        let response = client().get(server.url("/s")).send().await.unwrap();
        let body = error_body(response, status, code).await;
        assert_eq!(body["message"], "nope");
    }
    let finished: Arc<dyn Backend> = Arc::new(Mock::failing(BackendError::finished()));
    let server =
        TestServer::route("/s", vec![("b", finished)], |_| {}, ServerConfig::default()).await;
    let response = client().get(server.url("/s")).send().await.unwrap();
    assert_eq!(response.status(), 204);
}

#[tokio::test]
async fn open_streams_are_bounded_and_a_closed_one_frees_its_slot() {
    let mock = Mock::new(vec![
        Step::Event(event("1", "a", json!({"n": 1}))),
        Step::Pending,
    ]);
    let backend: Arc<dyn Backend> = Arc::new(mock.clone());
    let server = TestServer::route(
        "/s",
        vec![("b", backend)],
        |_| {},
        ServerConfig {
            max_streams: 1,
            ..ServerConfig::default()
        },
    )
    .await;
    let first = client().get(server.url("/s")).send().await.unwrap();
    let mut lines = ndjson_lines(first);
    assert_eq!(lines.next().await.unwrap(), r#"{"n":1}"#);
    assert_eq!(server.gateway.open_streams(), 1);

    let response = client().get(server.url("/s")).send().await.unwrap();
    assert_eq!(response.headers()["retry-after"], "1");
    let body = error_body(response, 503, "unavailable").await;
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("maximum of 1 open streams"),
        "{body}"
    );

    drop(lines);
    tokio::time::timeout(Duration::from_secs(5), mock.all_dropped())
        .await
        .expect("the stream is dropped when its client goes away");
    let again = client().get(server.url("/s")).send().await.unwrap();
    assert_eq!(again.status(), 200);
}

#[tokio::test]
async fn a_merged_route_refuses_a_cursor_that_is_not_its_own() {
    let a: Arc<dyn Backend> = Arc::new(Mock::new(vec![]));
    let b: Arc<dyn Backend> = Arc::new(Mock::new(vec![]));
    let server = TestServer::route(
        "/m",
        vec![("a", a), ("b", b)],
        |_| {},
        ServerConfig::default(),
    )
    .await;
    let response = client()
        .get(server.url("/m"))
        .header("last-event-id", "c=1")
        .send()
        .await
        .unwrap();
    let body = error_body(response, 400, "bad_request").await;
    assert!(
        body["message"].as_str().unwrap().contains("\"c\""),
        "{body}"
    );
}

/// A client that declares a body and then stalls is answered 408 when the
/// body timeout passes, and its stream slot is free again.
#[tokio::test(start_paused = true)]
async fn a_body_that_does_not_arrive_is_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::route(
        "/",
        vec![("demo", demo())],
        |_| {},
        ServerConfig {
            body_timeout: Duration::from_secs(10),
            ..ServerConfig::default()
        },
    )
    .await;
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"text\":")
        .await
        .unwrap();
    let start = tokio::time::Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0; 1024];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed without an answer");
        answer.extend_from_slice(&buf[..n]);
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(start.elapsed() >= Duration::from_secs(10));
    assert_eq!(server.gateway.open_streams(), 0);
}
