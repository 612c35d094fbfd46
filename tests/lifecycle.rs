//! A stream's life: flushed event by event, heartbeats while quiet, a final
//! event with the last id at its lifetime, idle limit and shutdown, and never
//! an empty body. Time-dependent tests run on paused tokio time: the clock
//! jumps to the next timer whenever everything waits, so a 15 s heartbeat
//! takes no real time, and the virtual time of each arrival is exact.

use std::sync::Arc;
use std::time::Duration;

use backends::Backend;
use backends::testing::{Mock, Step, event};
use backends::ticker::{Ticker, TickerConfig};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use gateway::config::{RouteConfig, ServerConfig};
use gateway_tests::{TestServer, all_ndjson, client, sse_events};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::time::Instant;

async fn one_route(backend: Arc<dyn Backend>, edit: impl FnOnce(&mut RouteConfig)) -> TestServer {
    TestServer::route("/s", vec![("b", backend)], edit, ServerConfig::default()).await
}

fn ticker(interval_ms: u64) -> Arc<dyn Backend> {
    Arc::new(Ticker::new(TickerConfig {
        interval: Duration::from_millis(interval_ms),
        ..TickerConfig::default()
    }))
}

/// Raw body chunks, for checking exactly what is written and when.
async fn chunks(server: &TestServer, query: &str) -> impl Stream<Item = Bytes> + Unpin {
    let response = client()
        .get(server.url(&format!("/s{query}")))
        .send()
        .await
        .expect("response");
    assert_eq!(response.status(), 200);
    response.bytes_stream().map(|c| c.expect("chunk")).boxed()
}

#[tokio::test]
async fn each_event_is_sent_before_the_backend_produces_the_next() {
    let gate = Arc::new(Notify::new());
    let mock = Mock::new(vec![
        Step::Event(event("1", "a", json!({"n": 1}))),
        Step::Gate(Arc::clone(&gate)),
        Step::Event(event("2", "a", json!({"n": 2}))),
    ]);
    let server = one_route(Arc::new(mock), |_| {}).await;
    let mut body = chunks(&server, "").await;
    // The backend is held at the gate: event 2 does not exist yet.
    let first = tokio::time::timeout(Duration::from_secs(5), body.next()).await;
    assert_eq!(
        first.expect("event 1 arrives on its own").unwrap(),
        "{\"n\":1}\n"
    );
    gate.notify_one();
    assert_eq!(body.next().await.unwrap(), "{\"n\":2}\n");
    assert!(body.next().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn sse_heartbeats_after_each_quiet_interval() {
    let server = one_route(Arc::new(Mock::new(vec![Step::Pending])), |r| {
        r.heartbeat = Duration::from_secs(15);
    })
    .await;
    let start = Instant::now();
    let mut body = chunks(&server, "?format=sse").await;
    assert_eq!(
        body.next().await.unwrap(),
        "retry: 3000\n\n",
        "the first byte is immediate"
    );
    assert!(start.elapsed() < Duration::from_secs(1));
    for n in 1..=3 {
        assert_eq!(body.next().await.unwrap(), ": heartbeat\n\n");
        let at = start.elapsed();
        assert!(
            at >= Duration::from_secs(15 * n) && at < Duration::from_secs(15 * n + 1),
            "heartbeat {n} at {at:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn ndjson_heartbeat_is_the_configured_line_and_events_defer_it() {
    let mock = Mock::new(vec![
        Step::Sleep(Duration::from_secs(8)),
        Step::Event(event("1", "a", json!({"n": 1}))),
        Step::Pending,
    ]);
    let server = one_route(Arc::new(mock), |r| {
        r.heartbeat = Duration::from_secs(10);
        r.ndjson_heartbeat = r#"{"type":"ping"}"#.into();
    })
    .await;
    let start = Instant::now();
    let mut body = chunks(&server, "").await;
    assert_eq!(body.next().await.unwrap(), "{\"n\":1}\n");
    assert_eq!(body.next().await.unwrap(), "{\"type\":\"ping\"}\n");
    let at = start.elapsed();
    // 10 s after the event (at 8 s), not 10 s after the start.
    assert!(
        at >= Duration::from_secs(18) && at < Duration::from_secs(19),
        "{at:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn at_its_lifetime_a_stream_ends_with_the_last_id_so_clients_resume() {
    let server = one_route(ticker(1000), |r| {
        r.max_lifetime = Duration::from_millis(3500);
        r.retry = Duration::from_millis(250);
    })
    .await;
    let start = Instant::now();
    let response = client()
        .get(server.url("/s?format=sse"))
        .send()
        .await
        .unwrap();
    let events: Vec<_> = sse_events(response).collect().await;
    let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["1", "2", "3", "4", "4"]);
    let close = events.last().unwrap();
    assert_eq!(close.event, "gateway.close");
    assert_eq!(close.retry, Some(Duration::from_millis(250)));
    let data: Value = serde_json::from_str(&close.data).unwrap();
    assert_eq!(
        data,
        json!({"event": "gateway.close", "reason": "lifetime", "last_event_id": "4"})
    );
    let at = start.elapsed();
    assert!(
        at >= Duration::from_millis(3500) && at < Duration::from_millis(3600),
        "{at:?}"
    );

    // The client resumes where it stopped.
    let response = client()
        .get(server.url("/s?format=sse"))
        .header("last-event-id", "4")
        .send()
        .await
        .unwrap();
    let mut resumed = sse_events(response);
    assert_eq!(resumed.next().await.unwrap().id, "5");
}

#[tokio::test(start_paused = true)]
async fn a_stream_without_events_for_max_idle_ends_the_same_way() {
    let mock = Mock::new(vec![Step::Event(event("7", "a", json!(7))), Step::Pending]);
    let server = one_route(Arc::new(mock.clone()), |r| {
        r.max_idle = Duration::from_secs(10);
        r.heartbeat = Duration::from_secs(3);
    })
    .await;
    let start = Instant::now();
    let response = client().get(server.url("/s")).send().await.unwrap();
    let lines = all_ndjson(response).await;
    let heartbeat = json!({"event": "gateway.heartbeat"});
    assert_eq!(
        lines,
        [
            json!(7),
            heartbeat.clone(),
            heartbeat.clone(),
            heartbeat,
            json!({"event": "gateway.close", "reason": "idle", "last_event_id": "7"}),
        ],
        "heartbeats do not count as activity"
    );
    let at = start.elapsed();
    assert!(
        at >= Duration::from_secs(10) && at < Duration::from_millis(10100),
        "{at:?}"
    );
    mock.all_dropped().await;
}

#[tokio::test]
async fn a_stream_without_any_event_still_has_a_body() {
    let server = one_route(Arc::new(Mock::new(vec![])), |_| {}).await;
    let response = client().get(server.url("/s")).send().await.unwrap();
    assert_eq!(
        all_ndjson(response).await,
        [json!({"event": "gateway.close", "reason": "empty", "last_event_id": null})]
    );
    let response = client()
        .get(server.url("/s?format=sse"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.text().await.unwrap(), "retry: 3000\n\n");
}

#[tokio::test(start_paused = true)]
async fn shutdown_ends_every_open_stream_with_its_last_id_and_stops_serving() {
    let server = one_route(ticker(1000), |_| {}).await;
    let response = client()
        .get(server.url("/s?format=sse"))
        .send()
        .await
        .unwrap();
    let mut sse = sse_events(response);
    let ndjson = client().get(server.url("/s")).send().await.unwrap();
    let mut lines = gateway_tests::ndjson_lines(ndjson);
    assert_eq!(sse.next().await.unwrap().id, "1");
    assert_eq!(sse.next().await.unwrap().id, "2");
    lines.next().await.unwrap();

    let start = Instant::now();
    server.gateway.shutdown_token().cancel();
    let close = sse.next().await.unwrap();
    assert_eq!(close.event, "gateway.close");
    assert_eq!(close.id, "2");
    let data: Value = serde_json::from_str(&close.data).unwrap();
    assert_eq!(data["reason"], "shutdown");
    assert_eq!(data["last_event_id"], "2");
    assert!(sse.next().await.is_none(), "the stream ends");
    let rest: Vec<Value> = lines
        .map(|l| serde_json::from_str(&l).unwrap())
        .collect()
        .await;
    let (last, ticks) = rest.split_last().unwrap();
    assert_eq!(last["reason"], "shutdown");
    assert!(ticks.iter().all(|t| t["seq"].is_u64()), "{rest:?}");
    server.task.await.unwrap().unwrap();
    // No timer was needed: everything ended at once.
    assert!(
        start.elapsed() < Duration::from_millis(1),
        "{:?}",
        start.elapsed()
    );
    assert!(
        client()
            .get(format!("http://{}/healthz", server.addr))
            .send()
            .await
            .is_err()
    );
}

/// A backend that always has an event ready.
#[derive(Debug)]
struct Flood;

#[async_trait::async_trait]
impl Backend for Flood {
    async fn open(
        &self,
        _: &backends::RequestContext,
    ) -> Result<backends::EventStream, backends::BackendError> {
        let events =
            futures::stream::iter(1u64..).map(|n| Ok(event(&n.to_string(), "f", json!(n))));
        Ok(events.boxed())
    }
}

/// The lifetime holds even when events never stop coming: a client that
/// reads slower than the backend produces must still be closed on time.
#[tokio::test(start_paused = true)]
async fn the_lifetime_holds_against_a_backend_that_never_pauses() {
    // The client takes nothing while the clock moves a minute: a send
    // timeout longer than that, or it would close the connection first.
    let server = TestServer::route(
        "/s",
        vec![("b", Arc::new(Flood) as Arc<dyn Backend>)],
        |r| r.max_lifetime = Duration::from_secs(60),
        ServerConfig {
            send_timeout: Duration::from_secs(3600),
            ..ServerConfig::default()
        },
    )
    .await;
    let mut body = chunks(&server, "").await;
    // The clock moves only when told: the client keeps everything busy.
    for _ in 0..20 {
        body.next().await.expect("a chunk");
    }
    tokio::time::advance(Duration::from_secs(61)).await;
    // What the sockets hold comes first (megabytes, as much as the
    // kernel's buffers take), then the close.
    let mut tail = String::new();
    for _ in 0..100_000 {
        match body.next().await {
            Some(chunk) => tail = String::from_utf8_lossy(&chunk).into_owned(),
            None => break,
        }
    }
    let last = tail.lines().last().expect("a last line");
    let close: Value = serde_json::from_str(last).expect("JSON");
    assert_eq!(close["event"], "gateway.close", "{last}");
    assert_eq!(close["reason"], "lifetime");
    assert!(body.next().await.is_none(), "the stream ended");
}
