//! The default config reproduces the reference stream, object for object and
//! header for header, in NDJSON and as SSE.

use std::time::{Duration, Instant};

use gateway_tests::{REFERENCE_LINES, TestServer, all_sse_events, client, text};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

fn assert_stream_headers(response: &reqwest::Response, content_type: &str, host: &str) {
    let h = response.headers();
    assert_eq!(response.status(), 200);
    assert_eq!(h["content-type"], content_type);
    assert_eq!(h["x-aggregateinfo-result"], "OK");
    assert_eq!(h["x-request-host"], host);
    assert_eq!(h["cache-control"], "no-cache");
    assert_eq!(h["x-accel-buffering"], "no");
    assert_eq!(h["vary"], "accept");
    assert!(
        h.get("content-encoding").is_none(),
        "streams are never compressed"
    );
    assert!(h.get("content-length").is_none(), "streams are chunked");
}

#[tokio::test]
async fn ndjson_get_and_post_are_the_reference_stream() {
    let server = TestServer::default_config().await;
    let http = client();
    for request in [
        http.get(server.url("/")),
        http.post(server.url("/")),
        http.get(server.url("/")).header("accept", "*/*"),
        http.get(server.url("/"))
            .header("accept-encoding", "gzip, br"),
    ] {
        let response = request.send().await.unwrap();
        assert_stream_headers(&response, "application/x-ndjson", "unknown");
        let body = text(response).await;
        let expected: String = REFERENCE_LINES.iter().map(|l| format!("{l}\n")).collect();
        assert_eq!(body, expected);
    }
}

#[tokio::test]
async fn request_host_comes_from_x_original_host() {
    let server = TestServer::default_config().await;
    let http = client();
    let response = http
        .head(server.url("/"))
        .header("x-original-host", "d111.cloudfront.net")
        .send()
        .await
        .unwrap();
    assert_stream_headers(&response, "application/x-ndjson", "d111.cloudfront.net");
    let response = http
        .head(server.url("/"))
        .header("x-original-host", "")
        .send()
        .await
        .unwrap();
    assert_stream_headers(&response, "application/x-ndjson", "unknown");
    assert_eq!(text(response).await, "", "HEAD has no body");
}

#[tokio::test]
async fn sse_gives_the_same_events_with_ids_and_names() {
    let server = TestServer::default_config().await;
    let response = client()
        .get(server.url("/"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_stream_headers(&response, "text/event-stream", "unknown");
    let events = all_sse_events(response).await;
    let raw = client()
        .get(server.url("/?format=sse"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(raw.starts_with("retry: 3000\n\n"), "{raw}");
    let got: Vec<(String, String, Value)> = events
        .iter()
        .map(|e| {
            (
                e.id.clone(),
                e.event.clone(),
                serde_json::from_str(&e.data).unwrap(),
            )
        })
        .collect();
    let names = ["start", "data", "data", "data", "data", "end"];
    let expected: Vec<(String, String, Value)> = REFERENCE_LINES
        .iter()
        .enumerate()
        .map(|(i, l)| {
            (
                i.to_string(),
                names[i].to_string(),
                serde_json::from_str(l).unwrap(),
            )
        })
        .collect();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn sse_resumes_after_last_event_id_and_stops_after_the_end() {
    let server = TestServer::default_config().await;
    let http = client();
    let response = http
        .get(server.url("/?format=sse"))
        .header("last-event-id", "2")
        .send()
        .await
        .unwrap();
    let ids: Vec<String> = all_sse_events(response)
        .await
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids, ["3", "4", "5"]);
    // After the last event, 204 tells EventSource to stop reconnecting.
    let response = http
        .get(server.url("/?format=sse"))
        .header("last-event-id", "5")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
}

#[tokio::test]
async fn post_text_streams_its_tokens() {
    let server = TestServer::default_config().await;
    let response = client()
        .post(server.url("/"))
        .body(r#"{"text": "Hi, you"}"#)
        .send()
        .await
        .unwrap();
    let lines: Vec<Value> = text(response)
        .await
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let tokens: Vec<&str> = lines.iter().filter_map(|l| l["token"].as_str()).collect();
    assert_eq!(tokens, ["Hi", ",", " ", "you"]);
    assert_eq!(lines.first().unwrap()["event"], "start");
    assert_eq!(lines.last().unwrap()["event"], "end");
}

/// `curl -N` as a user runs it sees each object as it is produced: the
/// first arrives a whole stream's worth of pauses (1.7 s) before the last.
#[tokio::test]
async fn curl_sees_the_first_object_well_before_the_last() {
    let server = TestServer::default_config().await;
    let mut child = tokio::process::Command::new("curl")
        .args(["-sS", "-N", &server.url("/")])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("curl is installed");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    while let Some(line) = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("curl output within 10 s")
        .unwrap()
    {
        seen.push((line, Instant::now()));
    }
    assert!(child.wait().await.unwrap().success());
    let got: Vec<&str> = seen.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(got, REFERENCE_LINES);
    let spread = seen[5].1 - seen[0].1;
    assert!(
        spread >= Duration::from_millis(1200),
        "first and last object {spread:?} apart: the stream was buffered"
    );
}

#[tokio::test]
async fn health_answers_for_the_adapter() {
    let server = TestServer::default_config().await;
    let response = client().get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ok");
}

/// The reference system's `X-AggregateInfo-Result` belongs to the
/// reference route: a route of a user's config sends no such header.
#[tokio::test]
async fn the_reference_header_stays_on_the_reference_route() {
    let config = gateway::config::load(
        gateway::config::Source::Text {
            origin: "test",
            text: "[routes.ticks]\npath = \"/ticks\"\nmax_lifetime = \"1s\"\n[routes.ticks.backends.clock]\ntype = \"ticker\"\ninterval = \"100ms\"\ncount = 1\n",
        },
        Some(std::collections::HashMap::new()),
    )
    .expect("a config");
    let server = TestServer::from_config(&config).await;
    let response = client().get(server.url("/ticks")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers().get("x-aggregateinfo-result").is_none(),
        "{:?}",
        response.headers()
    );
}
