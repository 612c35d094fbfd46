//! Fan-in: several backends merged into one stream, each event tagged with
//! its source, resumable per backend, failures contained, and every
//! backend's work stopped when the client goes away.

use std::sync::Arc;
use std::time::Duration;

use backends::testing::{Mock, Step, event};
use backends::{Backend, BackendError, ErrorKind};
use futures::StreamExt;
use gateway::config::{ErrorPolicy, ServerConfig};
use gateway_tests::{TestServer, all_ndjson, client, ndjson_lines, sse_events};
use serde_json::{Value, json};
use tokio::sync::Notify;

const BOUND: Duration = Duration::from_secs(5);

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {BOUND:?}"))
}

async fn merged(a: &Mock, b: &Mock, policy: ErrorPolicy) -> TestServer {
    let backends: Vec<(&str, Arc<dyn Backend>)> =
        vec![("a", Arc::new(a.clone())), ("b", Arc::new(b.clone()))];
    TestServer::route(
        "/m",
        backends,
        |r| r.on_error = policy,
        ServerConfig::default(),
    )
    .await
}

#[tokio::test]
async fn events_interleave_as_they_come_each_tagged_with_its_source() {
    let (gate_a, gate_b) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let a = Mock::new(vec![
        Step::Event(event("a1", "t", json!(1))),
        Step::Gate(Arc::clone(&gate_a)),
        Step::Event(event("a2", "t", json!(2))),
    ]);
    let b = Mock::new(vec![
        Step::Gate(Arc::clone(&gate_b)),
        Step::Event(event("b1", "t", json!(3))),
    ]);
    let server = merged(&a, &b, ErrorPolicy::Continue).await;
    let response = client().get(server.url("/m")).send().await.unwrap();
    let mut lines = ndjson_lines(response).map(|l| serde_json::from_str::<Value>(&l).unwrap());

    let first = within("a's first event", lines.next()).await.unwrap();
    assert_eq!(
        first,
        json!({"id": "a=a1", "event": "t", "source": "a", "data": 1})
    );
    gate_b.notify_one();
    let second = within("b's event", lines.next()).await.unwrap();
    assert_eq!(
        second,
        json!({"id": "a=a1&b=b1", "event": "t", "source": "b", "data": 3})
    );
    gate_a.notify_one();
    let third = within("a's second event", lines.next()).await.unwrap();
    assert_eq!(
        third,
        json!({"id": "a=a2&b=b1", "event": "t", "source": "a", "data": 2})
    );
    assert!(
        within("the end", lines.next()).await.is_none(),
        "ends when both ended"
    );
}

#[tokio::test]
async fn a_merged_cursor_resumes_each_backend_where_it_was() {
    let a = Mock::new(vec![Step::Event(event("a3", "t", json!(1)))]);
    let b = Mock::new(vec![]);
    let server = merged(&a, &b, ErrorPolicy::Continue).await;
    let response = client()
        .get(server.url("/m?format=sse"))
        .header("last-event-id", "a=a2&b=b%26")
        .send()
        .await
        .unwrap();
    let events: Vec<_> = sse_events(response).collect().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].id, "a=a3&b=b%26");
    assert_eq!(a.opened()[0].last_event_id.as_deref(), Some("a2"));
    assert_eq!(b.opened()[0].last_event_id.as_deref(), Some("b&"));
}

#[tokio::test]
async fn a_failing_backend_yields_an_error_event_and_the_others_go_on() {
    let gate = Arc::new(Notify::new());
    let a = Mock::new(vec![
        Step::Event(event("a1", "t", json!(1))),
        Step::Fail(BackendError::new(ErrorKind::Upstream, "connection reset")),
        Step::Gate(Arc::clone(&gate)),
        Step::Event(event("a2", "t", json!(2))),
    ]);
    let b = Mock::new(vec![Step::Event(event("b1", "t", json!(3)))]);
    let server = merged(&a, &b, ErrorPolicy::Continue).await;
    let response = client().get(server.url("/m")).send().await.unwrap();
    let mut lines = ndjson_lines(response).map(|l| serde_json::from_str::<Value>(&l).unwrap());
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &Value| l["event"] == "gateway.error") || seen.len() < 3 {
        seen.push(within("events", lines.next()).await.unwrap());
    }
    gate.notify_one();
    while let Some(line) = within("the rest", lines.next()).await {
        seen.push(line);
    }
    let error = seen.iter().find(|l| l["event"] == "gateway.error").unwrap();
    assert_eq!(
        error["data"],
        json!({"event": "gateway.error", "source": "a", "kind": "upstream", "message": "connection reset"})
    );
    assert_eq!(error["source"], "a");
    let data: Vec<&Value> = seen
        .iter()
        .filter(|l| l["event"] == "t")
        .map(|l| &l["data"])
        .collect();
    assert_eq!(data.len(), 3, "a1, b1 and a2 all arrive: {seen:?}");
    assert!(!seen.iter().any(|l| l["event"] == "gateway.close"));
}

#[tokio::test]
async fn with_abort_a_failure_ends_the_stream_and_stops_the_others() {
    let a = Mock::new(vec![
        Step::Event(event("a1", "t", json!(1))),
        Step::Fail(BackendError::new(ErrorKind::Upstream, "gone")),
    ]);
    let b = Mock::new(vec![Step::Pending]);
    let server = merged(&a, &b, ErrorPolicy::Abort).await;
    let response = client().get(server.url("/m")).send().await.unwrap();
    let lines = within("the aborted stream", all_ndjson(response)).await;
    let events: Vec<&Value> = lines.iter().map(|l| &l["event"]).collect();
    assert_eq!(events, ["t", "gateway.error", "gateway.close"]);
    assert_eq!(
        lines[2]["data"],
        json!({"event": "gateway.close", "reason": "error", "last_event_id": "a=a1"})
    );
    within("b stopped", b.all_dropped()).await;
}

#[tokio::test]
async fn a_client_that_goes_away_stops_every_backend() {
    let a = Mock::new(vec![Step::Event(event("a1", "t", json!(1))), Step::Pending]);
    let b = Mock::new(vec![Step::Endless(Duration::from_millis(50))]);
    let server = merged(&a, &b, ErrorPolicy::Continue).await;
    let response = client()
        .get(server.url("/m?format=sse"))
        .send()
        .await
        .unwrap();
    let mut events = sse_events(response);
    within("a first event", events.next()).await.unwrap();
    assert_eq!((a.live(), b.live()), (1, 1));
    drop(events);
    within("a stopped", a.all_dropped()).await;
    within("b stopped", b.all_dropped()).await;
    assert_eq!(server.gateway.open_streams(), 0);
}

#[tokio::test]
async fn one_backend_failing_to_open_fails_the_request_and_closes_the_others() {
    let a = Mock::new(vec![Step::Pending]);
    let b = Mock::failing(BackendError::new(
        ErrorKind::Timeout,
        "upstream did not answer",
    ));
    let server = merged(&a, &b, ErrorPolicy::Continue).await;
    let response = client().get(server.url("/m")).send().await.unwrap();
    assert_eq!(response.status(), 504);
    assert_eq!(a.opened().len(), 1);
    within("a stopped", a.all_dropped()).await;
}

#[tokio::test]
async fn backends_already_finished_are_left_out_and_all_finished_is_204() {
    let a = Mock::failing(BackendError::finished());
    let b = Mock::new(vec![Step::Event(event("b2", "t", json!(2)))]);
    let server = merged(&a, &b, ErrorPolicy::Continue).await;
    let response = client().get(server.url("/m")).send().await.unwrap();
    let lines = all_ndjson(response).await;
    assert_eq!(
        lines,
        [json!({"id": "b=b2", "event": "t", "source": "b", "data": 2})]
    );

    let c = Mock::failing(BackendError::finished());
    let server = merged(&a, &c, ErrorPolicy::Continue).await;
    let response = client().get(server.url("/m")).send().await.unwrap();
    assert_eq!(response.status(), 204);
}

/// A backend that does not open in time fails the request with 504, and a
/// failing one fails it at once, without waiting for a slow one.
#[tokio::test(start_paused = true)]
async fn opening_is_bounded_and_fails_fast() {
    let slow = Mock::new(vec![Step::Pending]).opening_after(Duration::from_secs(3600));
    let quick = Mock::new(vec![Step::Pending]);
    let backends: Vec<(&str, Arc<dyn Backend>)> = vec![
        ("quick", Arc::new(quick.clone())),
        ("slow", Arc::new(slow.clone())),
    ];
    let server = TestServer::route(
        "/m",
        backends,
        |r| r.open_timeout = Duration::from_secs(5),
        ServerConfig::default(),
    )
    .await;
    let start = tokio::time::Instant::now();
    let response = client().get(server.url("/m")).send().await.unwrap();
    assert_eq!(response.status(), 504);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["message"], "backend slow did not open within 5s");
    assert!(start.elapsed() >= Duration::from_secs(5) && start.elapsed() < Duration::from_secs(6));
    quick.all_dropped().await;

    let failing = Mock::failing(BackendError::new(ErrorKind::Upstream, "refused"));
    let backends: Vec<(&str, Arc<dyn Backend>)> = vec![
        ("failing", Arc::new(failing)),
        ("slow", Arc::new(slow.clone())),
    ];
    let server = TestServer::route("/m", backends, |_| {}, ServerConfig::default()).await;
    let start = tokio::time::Instant::now();
    let response = client().get(server.url("/m")).send().await.unwrap();
    assert_eq!(response.status(), 502);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
}

/// A backend's error that names where its client stands (a bus's notice)
/// carries the route's id for it: on a merged route, the cursor with that
/// backend at its resume id, in the event and as its id.
#[tokio::test]
async fn an_error_naming_a_resume_id_carries_the_routes_cursor() {
    let gate = Arc::new(Notify::new());
    let lagged = BackendError::new(ErrorKind::Lagged, "behind").with_resume_id("7");
    let a = Mock::new(vec![Step::Gate(Arc::clone(&gate)), Step::Fail(lagged)]);
    let b = Mock::new(vec![Step::Event(event("x", "t", json!(1))), Step::Pending]);
    let server = merged(&a, &b, ErrorPolicy::Continue).await;
    let response = client().get(server.url("/m")).send().await.unwrap();
    let mut lines = ndjson_lines(response).map(|l| serde_json::from_str::<Value>(&l).unwrap());
    let first = within("b's event", lines.next()).await.unwrap();
    assert_eq!(first["id"], "b=x");
    gate.notify_one();
    let error = within("a's notice", lines.next()).await.unwrap();
    assert_eq!(error["event"], "gateway.error", "{error}");
    assert_eq!(error["id"], "a=7&b=x", "{error}");
    assert_eq!(error["data"]["resume_id"], "a=7&b=x", "{error}");
}
